"""Models with several ``nn.Linear`` layers: auto-detection (``layer=None``) picks the Linear
whose output is what the model returns as logits, wherever it sits in the module tree and in
the call order, or fails with a clear error when no Linear produces the logits."""

import pytest
import torch
from reliability_helpers import BINS, MLP, R, loader, make_trainer, split
from torch import nn
from torch.nn import functional as F

from nac_lightning import NACMECallback, NeuronCoverage, kl_uniform_grad, neuron_states

ALPHA = 2000.0  # untrained models: a large alpha spreads the states over many bins


@pytest.fixture(scope="module")
def val():
    return split(0, 300)[1]


class AuxAfterHead(MLP):
    """Returns (logits, projection); the projection Linear, with the head's output width, is
    declared and called after the head."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(32, 10)

    def forward(self, x):
        z = self.features(x)
        return self.head(z), self.proj(z)


class AuxBeforeHead(AuxAfterHead):
    """An auxiliary Linear on the features is called before the head."""

    def forward(self, x):
        z = self.features(x)
        aux = self.proj(z)
        return {"logits": self.head(z), "aux": aux}


class Calibrated(MLP):
    """A Linear calibration layer on the head's output produces the logits."""

    def __init__(self):
        super().__init__()
        self.calib = nn.Linear(10, 10)

    def forward(self, x):
        return self.calib(super().forward(x))


class Cosine(MLP):
    """Cosine classifier through F.linear: no nn.Linear module outputs the logits."""

    def forward(self, x):
        z = F.normalize(self.features(x), dim=1)
        return 10 * F.linear(z, F.normalize(self.head.weight, dim=1))


class Ensemble(MLP):
    """Logits are the mean of two Linear heads: neither alone produces them."""

    def __init__(self):
        super().__init__()
        self.head2 = nn.Linear(32, 10)

    def forward(self, x):
        z = self.features(x)
        return (self.head(z) + self.head2(z)) / 2


class HeadTwice(MLP):
    """The head is called twice per forward (an auxiliary pass first): the hooks keep only a
    module's first call, so the fast path must refuse rather than read the wrong call."""

    def forward(self, x):
        z = self.features(x)
        self.head(torch.zeros_like(z))  # e.g. a bias-only reference pass
        return self.head(z)


def reference_on(model, x, y, z_fn, head):
    """NAC-ME from the input of `head` (closed form), independently of the callback."""
    model.eval()
    with torch.no_grad():
        z = z_fn(model, x)
        logits = head(z)
    states = neuron_states(z, kl_uniform_grad(logits, head.weight), ALPHA)
    m = NeuronCoverage(states.shape[1], bins=BINS, r=R)
    m.update(states, mask=model_logits(model, x).argmax(1) == y)
    return m.compute().item()


def model_logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, tuple) else out["logits"] if isinstance(out, dict) else out


@pytest.mark.parametrize(
    "cls,head,z_fn",
    [
        (AuxAfterHead, "head", lambda m, x: m.features(x)),
        (AuxBeforeHead, "head", lambda m, x: m.features(x)),
        (Calibrated, "calib", lambda m, x: m.head(m.features(x))),
    ],
)
def test_auto_detection_picks_the_linear_producing_the_logits(tmp_path, val, cls, head, z_fn):
    torch.manual_seed(0)
    model = cls()
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R)
    make_trainer(tmp_path, [cb]).validate(model, loader(val), verbose=False)
    assert cb.fast is True and cb.head_name == head
    x, y = val.tensors
    ref = reference_on(model, x, y, z_fn, getattr(model, head))
    assert cb.history[0]["nac_me"] == pytest.approx(ref, abs=1e-6)
    acc = (model_logits(model, x).argmax(1) == y).float().mean().item()
    assert cb.history[0]["val_acc"] == pytest.approx(acc)


@pytest.mark.parametrize("cls", [Cosine, Ensemble, HeadTwice])
def test_no_linear_producing_the_logits_is_a_clear_error(tmp_path, val, cls):
    torch.manual_seed(0)
    model = cls()
    with pytest.raises(ValueError, match=r"no nn\.Linear in the model produces the logits") as e:
        make_trainer(tmp_path, [NACMECallback()]).validate(model, loader(val), verbose=False)
    msg = str(e.value)
    assert "Linear layers called: ['body.0', 'body.2'" in msg  # says what it saw
    assert "layer='module.path'" in msg  # and how to fix it
    # the general path on a named layer works for such models
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, layer="body")
    make_trainer(tmp_path, [cb]).validate(model, loader(val), verbose=False)
    assert cb.fast is False and 0 < cb.history[0]["nac_me"] <= 1
