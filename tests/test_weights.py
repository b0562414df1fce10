"""Pretrained-weights registry and `mp-lightning weights`: listing, checksums, download, clear errors."""
import hashlib
import io
import urllib.error

import pytest

from mp_lightning.io import weights
from mp_lightning.cli import main
from mp_lightning.errors import MissingWeightsError, UserFacingError


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_require_names_the_file_and_the_command(torch_home):
    for name, w in weights.WEIGHTS.items():
        with pytest.raises(MissingWeightsError) as err:
            weights.require(name)
        message = str(err.value)
        assert w.filename in message and str(torch_home) in message and "mp-lightning weights" in message


def test_listing_shows_every_file_with_state_and_path(torch_home, capsys):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for w in weights.WEIGHTS.values():
        assert w.name in out and str(w.path) in out
    assert out.count("missing") == len(weights.WEIGHTS)


def test_check_status_and_checksums(torch_home, capsys):
    assert main(["weights", "--check"]) == 1
    capsys.readouterr()

    face = weights.WEIGHTS["vggface2"]  # no hash in its name: present is enough
    face.path.parent.mkdir(parents=True)
    face.path.write_bytes(b"face weights")
    alex = weights.WEIGHTS["alexnet"]  # torchvision name: sha256 must start with 7be5be79
    alex.path.parent.mkdir(parents=True)
    alex.path.write_bytes(b"not the real alexnet")

    assert main(["weights", "vggface2"]) == 0
    out = capsys.readouterr().out
    assert "present" in out and hashlib.sha256(b"face weights").hexdigest()[:12] in out
    assert weights.verify("vggface2") is None and weights.verify("alexnet") is False
    assert main(["weights", "--check", "vggface2", "alexnet"]) == 1
    captured = capsys.readouterr()
    assert "CORRUPT" in captured.out and "alexnet" in captured.err


def test_unknown_name_is_a_user_error(torch_home, capsys):
    assert main(["weights", "resnet"]) == 2
    assert "unknown weight name" in capsys.readouterr().err


def test_download_offline_is_a_clear_error(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    with pytest.raises(UserFacingError, match="cannot download 'alexnet'.*copy alexnet-owt-7be5be79.pth"):
        weights.download("alexnet")
    assert not any(weights.WEIGHTS["alexnet"].path.parent.iterdir())  # no partial file left


class _Response(io.BytesIO):
    headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_writes_the_file_and_checks_the_hash(torch_home, monkeypatch, capsys):
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout: _Response(b"payload"))
    assert main(["weights", "--download", "vggface2"]) == 0
    assert weights.WEIGHTS["vggface2"].path.read_bytes() == b"payload"
    assert "present" in capsys.readouterr().out

    # a torchvision file whose content does not match the hash in its name is rejected, nothing is kept
    with pytest.raises(UserFacingError, match="sha256 does not start with 7be5be79"):
        weights.download("alexnet")
    assert not weights.WEIGHTS["alexnet"].path.exists()
    assert not list(weights.WEIGHTS["alexnet"].path.parent.glob("*.part"))
