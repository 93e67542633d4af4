"""The documented public API is importable from the package root, each name documented."""

import nac_lightning


def test_public_names_are_exported_and_documented():
    expected = {
        "NACMECallback", "NeuronCoverage", "kl_uniform_grad", "kl_uniform_grad_autograd",
        "neuron_states", "pool_neurons", "select", "correlations", "compare_selections",
        "DomainBedDataModule", "split_indices", "ERMModule", "ResultsWriter",
    }  # fmt: skip
    assert set(nac_lightning.__all__) == expected
    for name in expected:
        obj = getattr(nac_lightning, name)
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name
        assert name in nac_lightning.__doc__, name
