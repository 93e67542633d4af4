import pytest
from callback_helpers import digits


@pytest.fixture
def data():
    return digits()
