"""MC dropout: which modules to switch to train mode so that every dropout in a model is live.

A model in eval mode turns dropout off in four ways, and each needs its own switch:

- ``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout`` (every
  ``_DropoutNd``) read their own ``training`` flag;
- ``nn.MultiheadAttention(dropout=p)`` drops attention weights only when *it* is training (and
  takes a fused fast path without dropout in eval), and ``nn.RNN/LSTM/GRU(dropout=p)`` drop
  between layers only when they are training;
- ``nn.TransformerEncoderLayer`` (so ``TransformerEncoder`` and ``nn.Transformer``'s encoder)
  takes a fused fast path in eval that never calls its Dropout modules. Decoder layers have no
  such path today; they are switched too, so that a future one cannot turn dropout off;
- a module of any other class (a Hugging Face attention, a custom layer) can apply dropout in
  its own code, gated on its *own* ``training`` flag: BERT, RoBERTa, ELECTRA, DistilBERT,
  ALBERT and GPT-2 attention pass ``self.dropout.p if self.training else 0.0`` (the Dropout
  child is never called), ViT, Llama, T5, BART, CLIP, Whisper and wav2vec2 attention a float
  ``self.attention_dropout`` / ``self.dropout`` the same way.

Each module is switched alone (``module.training = True``, not ``.train()``, which would
recurse), so its children, BatchNorm included, stay in eval. For the stock modules train mode
changes nothing but dropout (the fast paths compute the same function; a ``TransformerEncoder``
given a padding mask then leaves its padded positions non-zero, which a masked model ignores).

A module of another class is a *dropout owner* when it has a direct ``_DropoutNd`` child with
rate > 0 or a float attribute named ``*dropout*`` > 0. What its own code does with ``training``
besides dropout cannot be read from outside, so an owner is switched only when nothing
visible says train mode would change more:

- no running statistics in its subtree (a buffer ``running_*`` / ``num_batches_tracked``, e.g.
  BatchNorm or InstanceNorm(track_running_stats=True)): its code could update them, or it is a
  whole network whose train mode may differ in other ways (e.g. Inception's auxiliary heads);
- no positive number named like another train-only mechanism (LayerDrop, drop path /
  stochastic depth, router jitter, SpecAugment's ``mask_time_prob`` / ``mask_feature_prob``)
  among its attributes or those of its ``config`` (Hugging Face modules keep one).

An owner that fails these and holds a float rate is refused, by name, with the reason (unless a
Dropout child of the same module has that rate: the setting the child was built from). One
with only Dropout children is left in eval and its children are switched, which is right when
its code calls them. Limits (docs/gotchas.md): an owner that passes the checks but uses
``training`` for something not named above would have that switched on too (gradient
checkpointing and ``use_cache`` in Hugging Face models are, and change no value); an owner that
fails them and reads its Dropout child's rate itself, or dropout in code with no rate
attribute at all (``F.dropout(x, 0.1, self.training)``), stays off.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from torch.nn.modules.dropout import _DropoutNd

_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_RUNNING = re.compile(r"(^|\.)(running_[^.]*|num_batches_tracked)$")
_OTHER_TRAIN_ONLY = re.compile(
    r"layer_?drop|drop_?path|drop_prob|stochastic_depth|jitter|mask_time_prob|mask_feature_prob",
    re.IGNORECASE,
)


def mc_dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The modules to set ``training = True`` on for stochastic MC-dropout passes.

    Raises:
        ValueError: if a module holds a positive dropout rate that cannot be switched on alone
            (the message names its path and why), or if no dropout with rate > 0 exists.
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
        elif not type(module).__module__.startswith("torch."):
            rates = _float_rates(module)
            owner = bool(rates) or _has_live_dropout_child(module)
            if owner and _owner_switched(module, path, rates):
                switch.append(module)
                live += len(rates)
    if not live:
        raise ValueError(
            "mc_dropout=True but the model has no Dropout layer with rate > 0 (nn.Dropout*, "
            "AlphaDropout, MultiheadAttention(dropout=...), a Transformer layer's dropout, "
            "a multi-layer RNN's dropout, or a module's own float *dropout* rate): every pass "
            "would be the same"
        )
    return switch


def _float_rates(module: nn.Module) -> dict[str, float]:
    """The module's positive float attributes named ``*dropout*``."""
    return {
        attr: value
        for attr, value in vars(module).items()
        if "dropout" in attr.lower() and isinstance(value, float) and value > 0
    }


def _has_live_dropout_child(module: nn.Module) -> bool:
    return any(isinstance(c, _DropoutNd) and c.p > 0 for c in module.children())


def _owner_switched(module: nn.Module, path: str, rates: dict[str, float]) -> bool:
    """Whether a dropout owner can be switched on alone; raises if it must be and cannot.

    Args:
        module: a module of a non-torch class with a live Dropout child or float rate.
        path: its name in the model, for the message.
        rates: its positive float ``*dropout*`` attributes.
    """
    why = _why_not_alone(module)
    if why is None:
        return True
    reason, setting = why
    built = {child.p for child in module.children() if isinstance(child, _DropoutNd)}
    hidden = {attr: value for attr, value in rates.items() if value not in built}
    if hidden:
        attr, value = next(iter(hidden.items()))
        raise ValueError(
            f"mc_dropout=True cannot make {path} ({type(module).__name__}) stochastic: its "
            f"{attr}={value} is a dropout rate applied in its own code, which runs it only "
            f"when the module itself is in train mode, and {reason}, so switching it could "
            "change more than dropout. Apply that dropout through an nn.Dropout submodule "
            f"called in forward, or set {attr}=0.0 to do without it"
            + (f", or set {setting}=0 to do without the other mechanism" if setting else "")
        )
    return False


def _why_not_alone(module: nn.Module) -> tuple[str, str | None] | None:
    """Why train mode of ``module`` may change more than dropout, or None if nothing says so.

    Returns:
        The reason, and the setting that causes it when one does (``"config.layerdrop"``).
    """
    for name, _ in module.named_buffers():
        if _RUNNING.search(name):
            return f"its subtree holds running statistics ({name})", None
    config = getattr(module, "config", None)
    sources: list[tuple[str, Any]] = [("", module)]
    if config is not None and hasattr(config, "__dict__"):
        sources.append(("config.", config))
    for prefix, holder in sources:
        for attr, value in vars(holder).items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and value > 0 and _OTHER_TRAIN_ONLY.search(attr):
                where = f"{prefix}{attr}"
                return f"its {where}={value} is another train-only mechanism", where
    return None
