"""The Colab notebook (launch/gigatok_colab.ipynb) runs top to bottom, headless, on the CPU.

Its parameter cell is replaced by tiny step counts (as papermill would inject them); every other
cell runs as committed, in a fresh Jupyter kernel whose working directory is outside the checkout.
"""

import json
import os

import pytest

from helpers import REPO

NOTEBOOK = os.path.join(REPO, "launch", "gigatok_colab.ipynb")
pytestmark = pytest.mark.slow          # trains four tiny runs in a kernel: not in the fast tier


def test_committed_notebook_has_no_outputs():
  nb = json.load(open(NOTEBOOK, encoding="utf-8"))
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  import nbclient      # requirements-test.txt: a missing one fails the test, it is not skipped
  import nbformat
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1
  work = tmp_path / "runs"
  params[0].source = "\n".join([
      "import os", "REPO_URL = ''", f"WORKDIR = {str(work)!r}", "DEMO_STEPS = 4",
      "AR_TOKENIZER_STEPS = 4", "AR_GPT_STEPS = 4", "AR_EXTRACT_IMAGES = 64",
      "OFFICIAL_CHECKPOINT = ''"])
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()

  def text(cell):
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                   for o in cell.outputs)
  code = [c for c in nb.cells if c.cell_type == "code"]
  pictures = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
  assert len(pictures) == 3            # the training grid, the reconstructions, the digits
  everything = "\n".join(text(c) for c in code)
  assert "mesh: {'data': 1, 'fsdp': 1, 'tensor': 1}" in everything
  assert "same codes as the run directory: True" in everything
  assert (work / "demo" / "checkpoints").is_dir() and (work / "demo_ar" / "gpt" / "codes").is_dir()
