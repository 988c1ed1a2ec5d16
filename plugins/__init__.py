"""Built-in LongLive plugins, installed as the `longlive_plugins` package.

Each sub-package is one plugin, registered under the `longlive.plugins` entry-point group in
pyproject.toml, the same way a third-party plugin registers itself.
"""
