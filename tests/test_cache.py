"""Cache entries are built in a temp folder and renamed in; they get the user's usual mode."""

from __future__ import annotations

import os
import stat

from mlxgen.cache import atomic_dir


def test_a_built_folder_gets_the_mode_mkdir_would_give(tmp_path):
    """`convert --out DIR` made a drwx------ folder (mkdtemp's mode); issue 18."""
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "entry") as build:
            (build / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "entry").stat().st_mode) == 0o755
