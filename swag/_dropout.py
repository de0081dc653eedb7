"""MC dropout: which modules to switch to train mode so that every dropout in a model is live.

A model in eval mode turns dropout off in three ways, and each needs its own switch:

- ``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout`` (every
  ``_DropoutNd``) read their own ``training`` flag;
- ``nn.MultiheadAttention(dropout=p)`` drops attention weights only when *it* is training (and
  takes a fused fast path without dropout in eval), and ``nn.RNN/LSTM/GRU(dropout=p)`` drop
  between layers only when they are training;
- ``nn.TransformerEncoderLayer`` (so ``TransformerEncoder`` and ``nn.Transformer``'s encoder)
  takes a fused fast path in eval that never calls its Dropout modules. Decoder layers have no
  such path today; they are switched too, so that a future one cannot turn dropout off.

Each of these modules is switched alone (``module.training = True``, not ``.train()``, which
would recurse), so BatchNorm and everything else with train/eval behaviour stays in eval. For
those stock modules train mode changes nothing but dropout (the fast paths compute the same
function; a ``TransformerEncoder`` given a padding mask then leaves its padded positions
non-zero, which a masked model ignores). A module of another type holding a dropout rate as a
plain float (``self.attention_dropout = 0.1``, Hugging Face style; unless a Dropout child of
the same module has that rate) gates it on its own ``training`` flag, which cannot be switched
without switching whatever else that module does in train mode: it is refused, by name.
Dropout applied in a module's own code with no such attribute (``F.dropout(x, p,
self.training)``, or the rate read from a Dropout child's ``p``) cannot be seen from outside
and stays off (docs/gotchas.md).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.dropout import _DropoutNd

_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def mc_dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The modules to set ``training = True`` on for stochastic MC-dropout passes.

    Raises:
        ValueError: if a module holds a positive dropout rate that cannot be switched on alone
            (the message names its path), or if no dropout with rate > 0 exists.
    """
    switch: list[nn.Module] = []
    live = 0
    for name, module in model.named_modules():
        path = name or "<the model>"
        if isinstance(module, _DropoutNd):
            switch.append(module)
            live += module.p > 0
        elif isinstance(module, nn.MultiheadAttention):
            switch.append(module)
            live += module.dropout > 0
        elif isinstance(module, nn.RNNBase):
            if module.dropout > 0 and module.num_layers > 1:
                switch.append(module)
                live += 1
        elif isinstance(module, _LAYERS):
            switch.append(module)  # off the fused fast path; its dropouts are counted above
        else:
            _refuse_float_rates(module, path)
    if not live:
        raise ValueError(
            "mc_dropout=True but the model has no Dropout layer with rate > 0 (nn.Dropout*, "
            "AlphaDropout, MultiheadAttention(dropout=...), a Transformer layer's dropout, or "
            "a multi-layer RNN's dropout): every pass would be the same"
        )
    return switch


def _refuse_float_rates(module: nn.Module, path: str) -> None:
    """Raises if ``module`` stores a positive dropout rate as a float attribute.

    A rate equal to that of one of its own Dropout children is taken as the setting that child
    was built from (``self.rate = p; self.drop = nn.Dropout(p)``), and let through.
    """
    built = {child.p for child in module.children() if isinstance(child, _DropoutNd)}
    for attr, value in vars(module).items():
        if "dropout" in attr and isinstance(value, float) and value > 0 and value not in built:
            raise ValueError(
                f"mc_dropout=True cannot make {path} ({type(module).__name__}) stochastic: its "
                f"{attr}={value} is a dropout rate applied in its own code, which runs it only "
                "when the module itself is in train mode, and switching the whole module could "
                "change more than dropout. Apply that dropout through an nn.Dropout submodule "
                f"called in forward, or set {attr}=0.0 to do without it"
            )
