"""Chapter 12: where to go next, and how to ask for help well.

Mostly pointers, plus the few commands that make a question or a bug report useful:
built-in documentation, the environment report the forums and issue tracker ask for,
and the exact source revision your PyTorch was built from.
"""

# %% [markdown]
# # Further Learning and Community
#
# The tour covered the core API. The resources below go deeper; the code cells show
# how to get the facts about your own installation that any helper will ask for.

# %% Official Documentation and Tutorials
import re

import torch
from torch import nn

# pytorch.org/docs is the API reference (pick the version matching torch.__version__);
# pytorch.org/tutorials has runnable tutorials from "Learn the Basics" to distributed
# training, compilation and deployment. The same docstrings are available offline:
first_line = nn.Linear.__doc__.strip().splitlines()[0]
print("nn.Linear:", first_line)
assert "linear transformation" in first_line.lower()
print("torch version:", torch.__version__, "-> read the docs for", ".".join(torch.__version__.split(".")[:2]))
# In Jupyter or IPython, `nn.Linear?` shows the same text; in a shell, `python -m pydoc torch.nn.Linear`.

# %% PyTorch Forums
# discuss.pytorch.org is the official forum (categories for vision, distributed,
# compilers, mobile...). A question gets answered fastest with a minimal script that
# reproduces the problem, the full error message, and your environment, which this
# command collects: python -m torch.utils.collect_env
from torch.utils import collect_env

report = collect_env.get_pretty_env_info()
for line in report.splitlines()[:6]:
    print("  " + line)
assert report.startswith("PyTorch version:") and torch.__version__ in report

# %% Books and Courses
# A few well-known, regularly updated starting points:
# * "Deep Learning with PyTorch" by Eli Stevens, Luca Antiga and Thomas Viehmann (Manning),
#   written by people from the PyTorch core team.
# * "Dive into Deep Learning" (d2l.ai): a free, open book with PyTorch code for every
#   chapter.
# * fast.ai's "Practical Deep Learning for Coders": a free course, top-down, built on
#   PyTorch and the fastai library.
# * "Machine Learning with PyTorch and Scikit-Learn" by Sebastian Raschka et al. (Packt).
# * The official "Learn the Basics" series at pytorch.org/tutorials, which this tour
#   loosely follows.
resources = {
    "docs": "https://pytorch.org/docs",
    "tutorials": "https://pytorch.org/tutorials",
    "forum": "https://discuss.pytorch.org",
    "d2l": "https://d2l.ai",
    "source": "https://github.com/pytorch/pytorch",
}
assert all(url.startswith("https://") for url in resources.values())
print("\n".join(f"{name:>10}: {url}" for name, url in resources.items()))

# %% GitHub Repository
# github.com/pytorch/pytorch holds the source, the issue tracker (search it with the
# exact error message before filing) and CONTRIBUTING.md. The Python parts of torch are
# readable: torch/nn/modules/, torch/optim/ and torch/utils/data/ are good first reads,
# and your installed copy is right here:
print("installed at:", torch.__file__)
print("built from commit:", torch.version.git_version)
assert re.fullmatch(r"[0-9a-f]{40}", torch.version.git_version) or torch.version.git_version == "Unknown"
optim_source = torch.optim.SGD.__module__
print("torch.optim.SGD lives in module", optim_source)
assert optim_source == "torch.optim.sgd"

# %% Research Papers
# * "Automatic differentiation in PyTorch" (Paszke et al., NIPS 2017 Autodiff workshop).
# * "PyTorch: An Imperative Style, High-Performance Deep Learning Library" (Paszke et al.,
#   NeurIPS 2019, arXiv:1912.01703): the design paper; cite it when you use PyTorch.
# * "PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode Transformation and
#   Graph Compilation" (Ansel et al., ASPLOS 2024): how torch.compile works.
# Most new deep-learning papers publish PyTorch code; arXiv listings often link it, and
# the Hugging Face Hub hosts many of the resulting models.
papers = [
    ("Paszke et al. 2019", "https://arxiv.org/abs/1912.01703"),
    ("Ansel et al. 2024", "https://doi.org/10.1145/3620665.3640366"),
]
for authors, link in papers:
    print(f"{authors}: {link}")
