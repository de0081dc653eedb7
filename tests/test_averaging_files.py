"""``swag average``: safetensors, torch and DCP checkpoints averaged against float64 sums."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn

from swag import cli
from swag.averaging._files import weights_for


def _states() -> list[dict[str, torch.Tensor]]:
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        model(torch.randn(8, 4))  # BN statistics and its integer counter move
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return states


def _write(states: list[dict[str, torch.Tensor]], folder: Path) -> list[str]:
    """The three states as safetensors, a torch file and a DCP folder."""
    st, pt, dc = folder / "a.safetensors", folder / "b.pt", folder / "c_dcp"
    save_file(states[0], str(st))
    torch.save(states[1], pt)
    with warnings.catch_warnings():  # "assuming ... a single process": it is one
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.save(states[2], checkpoint_id=str(dc), no_dist=True)
    return [str(st), str(pt), str(dc)]


@pytest.mark.parametrize(
    ("flags", "weights"),
    [([], [1 / 3] * 3), (["--ema", "0.5"], [0.25, 0.25, 0.5]), (["--lawa", "2"], [0, 0.5, 0.5])],
)
def test_average_of_mixed_formats_matches_float64(tmp_path: Path, flags, weights) -> None:
    states = _states()
    paths = _write(states, tmp_path)
    out = tmp_path / "avg.safetensors"
    assert cli.main(["average", *paths, "--out", str(out), *flags]) == 0
    got = load_file(str(out))
    assert set(got) == set(states[0])
    for name, t in got.items():
        if t.is_floating_point():
            ref = sum(w * s[name].double() for w, s in zip(weights, states, strict=True))
            torch.testing.assert_close(t.double(), ref, rtol=0, atol=1e-7)
            assert t.dtype == states[0][name].dtype
        else:
            assert torch.equal(t, states[-1][name])  # counters: from the last file


def test_ema_weights_follow_the_ema_recursion() -> None:
    w = weights_for(4, ema=0.9)
    # the recursion θ̄ ← 0.9 θ̄ + 0.1 θ over 4 files, the first copied
    assert w == pytest.approx([0.9**3, 0.1 * 0.9**2, 0.1 * 0.9, 0.1])
    assert sum(w) == pytest.approx(1.0)


def test_mismatched_layouts_are_refused_by_name(tmp_path: Path, capsys) -> None:
    states = _states()
    save_file(states[0], str(tmp_path / "a.safetensors"))
    other = dict(states[1])
    other["0.weight"] = torch.zeros(5, 4)
    del other["1.bias"]
    save_file(other, str(tmp_path / "b.safetensors"))
    out = tmp_path / "avg.safetensors"
    argv = ["average", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1.bias" in err and "0.weight" in err
    assert not out.exists() and not list(tmp_path.glob(".avg*"))  # nothing written


def test_a_wrapped_torch_checkpoint_is_refused(tmp_path: Path, capsys) -> None:
    torch.save({"model": _states()[0], "epoch": 3}, tmp_path / "x.pt")
    out = tmp_path / "o.safetensors"
    assert cli.main(["average", str(tmp_path / "x.pt"), "--out", str(out)]) == 2
    assert "flat state dict" in capsys.readouterr().err


def test_a_failure_while_streaming_keeps_the_old_output(tmp_path: Path, monkeypatch) -> None:
    # The output is streamed through the one atomic writer: an error after some tensors were
    # written leaves the previous file byte for byte and no temporary file.
    from swag.averaging import _files

    states = _states()
    paths = _write(states, tmp_path)
    out = tmp_path / "avg.safetensors"
    assert cli.main(["average", *paths, "--out", str(out)]) == 0
    before = out.read_bytes()
    calls = 0

    def failing_get(self: object, name: str) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError("disk gone")
        return original(self, name)

    original = _files._Source.get
    monkeypatch.setattr(_files._Source, "get", failing_get)
    with pytest.raises(OSError, match="disk gone"):
        _files.average_files(paths, out, [1 / 3] * 3)
    assert calls == 3  # it failed mid-stream, after two tensors were read
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".avg*"))


def test_swag_has_one_atomic_writer() -> None:
    # Issue 20: one writer of files (persistence._io.write_atomic) plus the run folder's rename.
    import swag

    root = Path(swag.__file__).parent
    users = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "os.replace" in p.read_text() or "mkstemp" in p.read_text()
    )
    assert users == ["bench/_outdir.py", "persistence/_io.py"]
