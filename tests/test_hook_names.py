"""common.hook_names spells every hook as TransformerLens does, and the names exist on a model."""

import pytest
from transformer_lens.utilities import get_act_name

from common.hook_names import FORMS, act_name


@pytest.mark.parametrize("name", sorted(FORMS))
def test_every_form_is_transformer_lens_own(name):
    if "{l}" not in FORMS[name]:
        assert act_name(name) == get_act_name(name)
        return
    for layer in (0, 1, 11):
        want = get_act_name(name, layer, "ln1") if name == "normalized" else get_act_name(name, layer)
        assert act_name(name, layer) == want


def test_every_name_is_a_hook_point_of_the_model(planted_model):
    points = set(planted_model.hook_dict)
    for name, form in FORMS.items():
        assert (act_name(name, 1) if "{l}" in form else act_name(name)) in points, name


def test_bad_names_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown hook 'patern'"):
        act_name("patern", 1)
    with pytest.raises(ValueError, match="needs layer"):
        act_name("pattern")
    with pytest.raises(ValueError, match="takes no layer"):
        act_name("embed", 0)
