"""What the command-line tools share: flags parsed with one-line errors, the compilation cache."""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import flags

from research.errors import UserError


def one_line(e: BaseException) -> str:
  text = str(e)
  if len(text) > 1 and text[0] == text[-1] == "'":  # AttributeError wraps its message in quotes
    text = text[1:-1]
  text = text.replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
  return " ".join(text.split())


def parse_flags(argv: list[str], config_flag: Any) -> list[str]:
  """absl flag parsing, with config-file and override problems as one-line errors (exit 2)."""
  try:
    rest = flags.FLAGS(argv)
    if config_flag.value is not None:
      config_flag.value.task  # noqa: B018  (a config file that failed to load raises here)
    return rest
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
  except flags.Error as e:
    print(f"error: {one_line(e)}; see --helpfull", file=sys.stderr)
  except AttributeError as e:
    print(f"error: unknown config key in an override: {one_line(e)}", file=sys.stderr)
  except (OSError, KeyError, TypeError, ValueError) as e:
    print(f"error: could not load the config: {one_line(e)}", file=sys.stderr)
  sys.exit(2)


def use_compilation_cache() -> None:
  """JAX's persistent compilation cache in ``$RESEARCH_JAX_CACHE`` (default
  ``~/.cache/research_jax``; empty: off)."""
  import jax

  cache = os.environ.get("RESEARCH_JAX_CACHE", os.path.expanduser("~/.cache/research_jax"))
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
