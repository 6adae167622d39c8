"""A residual MLP with LayerNorm, as a metabench plug-in network.

in -> Linear(width) -> [x + Linear(ReLU(LayerNorm(x)))] x blocks -> LayerNorm -> Linear(out). Any
`nn.Module` is a network: register a factory `(input_dim, output_dim) -> module` under a name, and
a cell's `network = "resnet-ln"` trains it. Loaded with `--plugin examples/plugin_network/resnet_ln.py`
(or `plugins = [...]` in a sweep file), it runs on `torch`, `generic` (and `func`, which runs it on
the generic engine), `l2l` and `higher`; `jax` refuses it. The weights are the module's own
initialisation, seeded per run by the suite.

On its first meta-gradient the generic engine checks itself against the plain `torch` loop
(`algorithms.selfcheck`): with `compile = true` the torch.func path is wrong through LayerNorm's
double backward (pytorch/functorch#534), so the run falls back to the eager path, and its record's
`engine` and `self_check` say so.
"""
from torch import nn

from algorithms import register_network


class ResidualLayerNorm(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, width: int = 32, blocks: int = 2):
        super().__init__()
        self.embed = nn.Linear(input_dim, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(blocks))
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, output_dim)

    def forward(self, x):
        h = self.embed(x)
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(nn.functional.relu(norm(h)))
        return self.head(self.norm(h))


register_network("resnet-ln", ResidualLayerNorm)
