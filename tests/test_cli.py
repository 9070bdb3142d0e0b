import subprocess
import sys

import pytest

from lory_lightning import __version__
from lory_lightning.cli import main


def test_help_and_version(capsys):
    assert main([]) == 0
    assert "usage: lory" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.isolated  # runs `python -m lory_lightning` in a child process
def test_python_dash_m_is_the_same_program():
    out = subprocess.run([sys.executable, "-m", "lory_lightning", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"lory-lightning {__version__}"


def test_unknown_command_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err
