"""Builds loopwatch's compiled speedups (``loopwatch/_speedups.c``) into the wheel.

The speedups are optional: loopwatch has a Python version of everything in them.
Without a C compiler and Python's headers, on Windows, or with
``LOOPWATCH_NO_SPEEDUPS=1`` in the environment, the wheel is pure Python, and says so
in the build's output. An editable install puts the module beside the source.

The module is one C file that needs nothing but Python's own headers, so it is
compiled with the compiler and flags Python itself was built with (sysconfig's
``LDSHARED``, ``CFLAGS`` and ``CCSHARED``, as setuptools would), in one step.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if os.environ.get("LOOPWATCH_NO_SPEEDUPS"):
            self.app.display_info("loopwatch: LOOPWATCH_NO_SPEEDUPS is set: no compiled speedups")
            return
        root = Path(self.root)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        name = f"_speedups{suffix}"
        if version == "editable":
            target = root / "loopwatch" / name
        else:
            target = root / "build" / "speedups" / name
        try:
            self._compile(root / "loopwatch" / "_speedups.c", target)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            self.app.display_warning(
                f"loopwatch: compiled speedups not built ({exc}); loopwatch works without "
                "them, more slowly")
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(target)] = f"loopwatch/{name}"

    def _compile(self, source: Path, target: Path) -> None:
        ldshared = sysconfig.get_config_var("LDSHARED")
        include = sysconfig.get_paths().get("include")
        if not ldshared or not include or not Path(include, "Python.h").is_file():
            raise RuntimeError("no C compiler settings or Python.h for this Python")
        cmd = [
            *shlex.split(ldshared),
            *shlex.split(sysconfig.get_config_var("CFLAGS") or ""),
            *shlex.split(sysconfig.get_config_var("CCSHARED") or ""),
            f"-I{include}",
            str(source),
            "-o",
            str(target),
        ]
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
        self.app.display_info(f"loopwatch: built {target.name}")
