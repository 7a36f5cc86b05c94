"""notebooks/inspect_grids.ipynb runs top to bottom on a tiny label store and draws its pictures.

The store is made from the `tiny` synthetic world (one scene, a tiny random DINOv2) in-process;
the notebook is executed by nbclient in a kernel of *this* interpreter (a kernelspec written to a
temporary folder, so no user-installed ``python3`` kernel can stand in), pointed at the store
through ``BEVLABELS_STORE``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "inspect_grids.ipynb"

# A tiny random DINOv2 (as in test_labels_realdata.py): the plumbing of the real one, seconds on a CPU.
TINY_FEATURES = [
    "features.weights=random",
    "features.image_height=112",
    "+features.config_overrides={num_hidden_layers:1,hidden_size:32,num_attention_heads:2,intermediate_size:64}",
]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, compose_labels, request) -> Path:
    """A label store of the first scene of the `tiny` synthetic world (4 keyframes)."""
    try:
        import bevlabels.synthetic  # noqa: F401
    except ImportError as e:
        pytest.skip(f"bevlabels.synthetic is not importable ({e}); the notebook test needs the synthetic world")
    from pipelines.labels import run

    root = request.getfixturevalue("synth_tiny")
    out = tmp_path_factory.mktemp("nb") / "tiny.zarr"
    cfg = compose_labels(
        [
            f"dataset.root={root}",
            f"out={out}",
            "limit_scenes=1",
            "accumulation.max_sweeps=8",  # the notebook re-accumulates the scene: keep it to seconds
            "cluster.processes=false",
            "cluster.n_workers=1",
            *TINY_FEATURES,
        ]
    )
    summary = run(cfg)
    assert summary["keyframes_done_total"] == 4 and not summary["failures"], summary
    return out


def _kernel_manager(tmp_path: Path):
    """A kernel manager whose only kernelspec runs ``sys.executable -m ipykernel_launcher``."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "bevlabels-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bevlabels test (this venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    km = KernelManager(kernel_name="bevlabels-test", kernel_spec_manager=ksm)
    assert km.kernel_spec.argv[0] == sys.executable
    return km


def test_inspect_grids_notebook_runs(tiny_store, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The committed notebook carries no outputs (they would be stale and bloat diffs).
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "clear the notebook's outputs"
    assert nb.metadata["kernelspec"]["name"] == "python3" and nb.nbformat == 4
    # One extra cell, run last, reports which interpreter the kernel really is.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))

    monkeypatch.setenv("BEVLABELS_STORE", str(tiny_store))
    client = NotebookClient(
        nb, km=_kernel_manager(tmp_path), timeout=300, resources={"metadata": {"path": str(REPO / "notebooks")}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert Path(text.strip().splitlines()[-1]).resolve() == Path(sys.executable).resolve()
    assert str(tiny_store) in text and "random-init" in text and "RANDOMLY INITIALISED" in text
    pngs = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert len(pngs) >= 3, f"expected >= 3 figures (label sheet, lidar_px on cameras, similarity), got {len(pngs)}"
