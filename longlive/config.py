"""The experiment schema (frozen attrs classes), TOML loading, `--set` overrides and TOML output.

An experiment is one TOML file. Each top-level table has one owner class below; every default
lives in exactly one attrs field. `[plugins.<name>]` tables are validated by the plugin's own
`Config` class when the plugin manager is built (longlive/registry/manager.py).

Path semantics: a relative path written in the file is relative to the folder that holds the
file, so an experiment runs the same from any working directory; a relative path given on the
command line (`--set model.checkpoint=...`) is relative to the directory the command runs in.
`Experiment.path(value, key)` applies the rule for every path key, the plugins' included.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import attrs

from longlive.errors import ConfigError
from longlive.structure import file_name, in_range, one_of, relative_folder, structure, unstructure

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DTYPES = ("auto", "bf16", "fp32")

# Upper bounds of numeric fields: large enough for any real run, small enough that a typo
# (10**12) is an error here instead of a hang or an allocation failure later.
MAX_SEED = 2**32 - 1  # numpy and torch seeds; seed + rank + offsets stay far from int64 overflow
MAX_PIXELS = 8192  # frame height or width
MAX_FRAMES = 65536  # latent frames of a video, a sample or a window (~3 hours at 24 fps, stride 4)
MAX_CHUNKS = 100_000  # chunks a benchmark runs
MAX_STEPS = 10**9  # optimizer steps, step intervals
MAX_COUNT = 10**7  # clips, batch sizes, accumulation steps
MAX_DEPTH = 16  # nesting of tables and arrays in an experiment file
ATTENTION_BACKENDS = ("auto", "sdpa", "cudnn", "flex")
CHECKPOINT_FORMATS = ("auto", "longlive", "wan", "diffusers")
# torch.compile modes for the blocks. The CUDA-graph modes ("reduce-overhead", "max-autotune") fail in the
# chunk loop (a graph output is still referenced when the graph replays; docs/benchmarks.md), so they are refused.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


@attrs.frozen(kw_only=True)
class RunConfig:
    """[run]: what to run and where its outputs go."""

    name: str = attrs.field(validator=file_name())  # a plain name: the run folder is <output_dir>/<name>/
    task: str = "generate"  # generate | train | bench | a task a plugin registers
    seed: int = attrs.field(default=0, validator=in_range(0, MAX_SEED))
    plugins: tuple[str, ...] = ()
    # The run writes to <output_dir>/<name>/<timestamp>/: relative to the working directory
    # (without ..), or an absolute path.
    output_dir: str = attrs.field(default="runs", validator=relative_folder())
    device: str = "auto"  # auto (cuda if present, else cpu) | cpu | cuda | cuda:N
    dtype: str = attrs.field(default="auto", validator=one_of(DTYPES))  # auto: bf16 on cuda, fp32 on cpu
    threads: int = attrs.field(default=0, validator=in_range(0, 1024))  # torch CPU threads; 0 = auto: free cores


@attrs.frozen(kw_only=True)
class ModelConfig:
    """[model]: the networks and their weights."""

    preset: str = "wan2.2-ti2v-5b"  # a DiT preset name (`longlive plugins` lists them)
    checkpoint: str | None = None  # DiT weights; random weights when absent
    checkpoint_format: str = attrs.field(default="auto", validator=one_of(CHECKPOINT_FORMATS))
    attention: str = attrs.field(default="auto", validator=one_of(ATTENTION_BACKENDS))
    compile: bool = False  # torch.compile the transformer blocks (CUDA)
    compile_mode: str = attrs.field(default="default", validator=one_of(COMPILE_MODES))  # torch.compile's mode
    codec: str = "wan2.2-vae"  # the latent codec component
    codec_checkpoint: str | None = None
    text_encoder: str = "umt5-xxl"  # the text encoder component
    text_encoder_path: str | None = None  # HF directory, or Wan's models_t5_umt5-xxl-enc-bf16.pth
    tokenizer_path: str | None = None  # tokenizer directory (needed with Wan's .pth; else optional)
    lora: str | None = None  # LoRA adapter file (ours or LongLive's `generator_lora`); merged before quantizing


@attrs.frozen(kw_only=True)
class SamplerConfig:
    """[sampler]: video geometry and the denoising schedule (frames are latent frames)."""

    name: str = "unipc"  # a sampler component: unipc | fewstep | ...
    steps: int = attrs.field(default=4, validator=in_range(1, 1000))
    shift: float = attrs.field(default=5.0, validator=in_range(0.01, 100.0))
    guidance: float = attrs.field(default=1.0, validator=in_range(0.0, 50.0))  # 1.0 = no CFG
    negative_prompt: str = ""
    height: int = attrs.field(default=704, validator=in_range(1, MAX_PIXELS))  # pixels
    width: int = attrs.field(default=1280, validator=in_range(1, MAX_PIXELS))  # pixels
    num_frames: int = attrs.field(default=128, validator=in_range(1, MAX_FRAMES))
    frames_per_chunk: int = attrs.field(default=8, validator=in_range(1, MAX_FRAMES))
    window_frames: int = attrs.field(default=32, validator=in_range(1, MAX_FRAMES))  # includes the chunk being denoised

    def __attrs_post_init__(self) -> None:
        fpc = self.frames_per_chunk
        for key in ("num_frames", "window_frames"):
            value = getattr(self, key)
            if value % fpc:
                raise ConfigError(f"sampler.{key}: {value} is not a multiple of sampler.frames_per_chunk = {fpc}; "
                                  f"try {max(1, round(value / fpc)) * fpc}")


@attrs.frozen(kw_only=True)
class GenerateConfig:
    """[generate]: prompts and outputs of a generation run."""

    prompt: str | None = None  # one prompt for the whole video
    prompt_script: str | None = None  # a prompt script file (docs/prompt_scripts.md)
    image: str | None = None  # I2V: the first frame
    save_latents: bool = False  # parts under latents/ (longlive/latent_sink.py)
    latent_chunks_per_file: int = attrs.field(default=16, validator=in_range(1, MAX_COUNT))  # chunks per latents/ part
    fps: float = attrs.field(default=24.0, validator=in_range(1.0, 240.0))
    batch: int = attrs.field(default=1, validator=in_range(1, 64))

    def __attrs_post_init__(self) -> None:
        if (self.prompt is None) == (self.prompt_script is None):
            raise ConfigError("generate: give exactly one of prompt = \"...\" or prompt_script = \"file\"")


@attrs.frozen(kw_only=True)
class BenchConfig:
    """[bench]: the steady-state speed benchmark (docs/benchmarks.md defines every metric)."""

    warmup_chunks: int = attrs.field(default=5, validator=in_range(0, MAX_CHUNKS))  # excluded; >= window chunks
    measure_chunks: int = attrs.field(default=8, validator=in_range(1, MAX_CHUNKS))
    profile_chunks: int = attrs.field(default=1, validator=in_range(0, MAX_CHUNKS))  # profiled for the time split
    vae_chunks: int = attrs.field(default=4, validator=in_range(0, MAX_CHUNKS))  # streaming-decode FPS
    pipeline_chunks: int = attrs.field(default=0, validator=in_range(0, MAX_CHUNKS))  # pipelined end-to-end FPS


@attrs.frozen(kw_only=True)
class QuantConfig:
    """[quant]: a quantization format per model role ("none" = high precision); longlive/quant/apply.py."""

    generator: str = "none"  # a "quant_format" component, e.g. "fouroversix" (plugin quant_4o6)
    teacher: str = "none"
    critic: str = "none"
    mode: str = attrs.field(default="auto", validator=one_of(("auto", "real", "emulate")))  # auto: real if it can run
    skip: tuple[str, ...] = ()  # linears kept in high precision besides the model's own list: names or "re:<regex>"

    def __attrs_post_init__(self) -> None:
        for pattern in self.skip:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as e:
                    raise ConfigError(f"quant.skip: {pattern!r} is not a valid regular expression ({e})") from None


@attrs.frozen(kw_only=True)
class ParallelConfig:
    """[parallel]: how the processes of a torchrun launch share the work (docs/parallel.md).

    The core builds a (dp, sp) device mesh from WORLD_SIZE: `sp` processes split each chunk's
    sequence (a sequence-layout plugin such as sp_balanced does the splitting), dp = WORLD_SIZE / sp
    groups work on separate data. sp = 1: every process holds whole chunks.
    """

    sp: int = attrs.field(default=1, validator=in_range(1, 1024))


@attrs.frozen(kw_only=True)
class Experiment:
    """A whole experiment file. `plugins` holds the raw `[plugins.<name>]` tables."""

    run: RunConfig
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    generate: GenerateConfig | None = None
    bench: BenchConfig | None = None
    quant: QuantConfig = QuantConfig()
    parallel: ParallelConfig = ParallelConfig()
    train: Any = None  # structured by longlive.train (TrainConfig) when the task is train
    plugins: dict[str, dict] = attrs.field(factory=dict)
    source: Path | None = None  # the file it came from (not part of the schema)
    command_line_keys: frozenset[str] = frozenset()  # dotted keys given with --set (their paths are cwd-relative)

    def path(self, value: str, key: str) -> Path:
        """Resolve a path value of `key` (dotted, e.g. "train.data" or "plugins.toyworld.data_dir")."""
        return resolve_path(value, key, self.source, self.command_line_keys)


def resolve_path(value: str, key: str, source: Path | None, command_line_keys: frozenset[str]) -> Path:
    """The path rule (module docstring): file-relative unless `key` was given on the command line."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    from_file = key not in command_line_keys and source is not None
    return (source.parent if from_file else Path.cwd()) / path


_SECTIONS = ("run", "model", "sampler", "generate", "bench", "quant", "parallel", "train", "plugins")
_PATH_KEYS = (("model", "checkpoint"), ("model", "codec_checkpoint"), ("model", "text_encoder_path"),
              ("model", "tokenizer_path"), ("model", "lora"),
              ("generate", "prompt_script"), ("generate", "image"))
PATH_KEYS = _PATH_KEYS  # (section, key) of every core path value


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Read, override, validate and resolve an experiment file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    table = read_toml(path, where=str(path))
    keys = frozenset(apply_override(table, item) for item in overrides)
    return experiment_from_table(table, source=path, command_line_keys=keys)


def read_toml(path: Path, *, where: str) -> dict:
    """A TOML file as a table, nested at most MAX_DEPTH deep; every failure is one ConfigError line."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not a UTF-8 text file ({e.reason})") from None
    except RecursionError:  # tomllib recurses once per level of nesting
        raise ConfigError(f"{where}: tables or arrays nested too deeply (at most {MAX_DEPTH} levels)") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot be read ({e.strerror or e})") from None
    check_depth(table, where=where)
    return table


def check_depth(value: Any, *, where: str, depth: int = 0) -> None:
    """Tables and arrays nest at most MAX_DEPTH levels (deeper input is an error, not a stack overflow)."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where}: tables or arrays nested too deeply (at most {MAX_DEPTH} levels)")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        check_depth(child, where=where, depth=depth + 1)


def experiment_from_table(table: dict, *, source: Path | None = None,
                          command_line_keys: frozenset[str] = frozenset()) -> Experiment:
    """Validate a parsed TOML table (after overrides) into an Experiment."""
    from longlive.structure import nearest

    if "sweep" in table:
        raise ConfigError("sweep: this is a sweep file, not an experiment; run it with python -m longlive sweep FILE")
    for key in table:
        if key not in _SECTIONS:
            raise ConfigError(f"{key}: unknown table{nearest(key, _SECTIONS)}; "
                              f"valid tables: {', '.join(_SECTIONS)}")
    if "run" not in table:
        raise ConfigError("run: missing table [run]; every experiment needs [run] with at least name = \"...\"")
    table = _resolve_paths(table, source, command_line_keys)
    plugins = table.get("plugins", {})
    if not isinstance(plugins, dict) or any(not isinstance(v, dict) for v in plugins.values()):
        raise ConfigError("plugins: must hold only tables, written [plugins.<name>]")
    run = structure(table["run"], RunConfig, where="run")
    model = structure(table.get("model", {}), ModelConfig, where="model")
    sampler = structure(table.get("sampler", {}), SamplerConfig, where="sampler")
    generate = structure(table["generate"], GenerateConfig, where="generate") if "generate" in table else None
    bench = structure(table["bench"], BenchConfig, where="bench") if "bench" in table else None
    quant = structure(table.get("quant", {}), QuantConfig, where="quant")
    parallel = structure(table.get("parallel", {}), ParallelConfig, where="parallel")
    for name in plugins:
        if name not in run.plugins:
            raise ConfigError(f"plugins.{name}: a table is given but run.plugins does not list \"{name}\"; "
                              f"add it to run.plugins or remove the table")
    if len(set(run.plugins)) != len(run.plugins):
        raise ConfigError(f"run.plugins: lists a plugin twice: {list(run.plugins)}")
    if run.task == "generate" and generate is None:
        raise ConfigError("generate: missing table [generate] (task = \"generate\" needs a prompt or prompt_script)")
    if run.task == "bench" and bench is None:
        raise ConfigError("bench: missing table [bench] (task = \"bench\"); an empty [bench] takes the defaults")
    if run.task == "train" and "train" not in table:
        raise ConfigError("train: missing table [train] (task = \"train\")")
    return Experiment(run=run, model=model, sampler=sampler, generate=generate, bench=bench, quant=quant,
                      parallel=parallel, train=table.get("train"), plugins=dict(plugins), source=source,
                      command_line_keys=command_line_keys)


def _resolve_paths(table: dict, source: Path | None, command_line_keys: frozenset[str]) -> dict:
    """Make the core's path keys absolute (see the module docstring) and check that they exist."""
    table = {k: (dict(v) if isinstance(v, dict) else v) for k, v in table.items()}
    for section, key in _PATH_KEYS:
        value = table.get(section, {}).get(key) if isinstance(table.get(section), dict) else None
        if isinstance(value, str):
            dotted = f"{section}.{key}"
            resolved = resolve_path(value, dotted, source, command_line_keys)
            if not resolved.exists():
                relative_to = "the current directory (given with --set)" if dotted in command_line_keys or \
                    source is None else f"the experiment file's folder {source.parent}"
                raise ConfigError(f"{dotted}: file {value!r} does not exist (looked for {resolved}); "
                                  f"fix the path, relative to {relative_to}")
            table[section][key] = str(resolved)
    return table


def apply_override(table: dict, item: str) -> str:
    """Apply one `section.key=value` override (value in TOML syntax; bare words are strings).

    Returns the dotted key it set."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p for p in parts) or len(parts) < 2:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set sampler.num_frames=256")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
        check_depth(value, where=f"--set {key}")
    except RecursionError:
        raise ConfigError(f"--set {key}: the value is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except tomllib.TOMLDecodeError:
        bare = raw.strip()
        if not bare or any(c in bare for c in "[]{}\"'=,"):
            raise ConfigError(f"--set {item!r}: {raw.strip()!r} is not a TOML value; "
                              f"quote strings (--set {key}='\"text\"') and write lists as [1, 2]") from None
        value = bare
    node = table
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a table")
        node = child
    node[parts[-1]] = value
    return key


# ---- writing the resolved experiment -------------------------------------------------------


def experiment_to_table(exp: Experiment, plugin_configs: dict[str, Any], train: Any = None) -> dict:
    """Every default filled in: the record of what ran."""
    table = {"run": unstructure(exp.run), "model": unstructure(exp.model), "sampler": unstructure(exp.sampler),
             "quant": unstructure(exp.quant), "parallel": unstructure(exp.parallel)}
    for name in ("generate", "bench"):
        if getattr(exp, name) is not None:
            table[name] = unstructure(getattr(exp, name))
    if train is not None:
        table["train"] = unstructure(train)
    if plugin_configs:
        table["plugins"] = {k: unstructure(v) for k, v in plugin_configs.items()}
    return table


def dumps_toml(table: dict) -> str:
    """A small TOML writer for the types our schema uses (tables, scalars, flat lists)."""
    lines: list[str] = []
    _dump_table(table, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table: dict, path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append(f"\n[{'.'.join(path)}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, path + [key], lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
