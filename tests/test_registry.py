"""Registry: decorator registration, duplicates, unknown names, LAVIS-style views."""
import pytest

from lavislike.errors import RegistryError
from lavislike.registry import Registry, registry


def test_register_and_get():
    reg = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    assert reg.get("alpha") is Alpha
    assert "alpha" in reg and reg.names() == ["alpha"]


def test_duplicate_names_both_definitions():
    reg = Registry("widget")

    @reg.register("alpha")
    class First:
        pass

    with pytest.raises(RegistryError) as err:

        @reg.register("alpha")
        class Second:
            pass

    msg = str(err.value)
    assert "registered twice" in msg and "test_registry.py" in msg
    assert msg.count("test_registry.py") == 2  # both definition sites


def test_unknown_name_lists_known_and_closest():
    reg = Registry("widget")
    reg.register("blip2_opt", object())
    reg.register("blip2_t5", object())
    with pytest.raises(RegistryError) as err:
        reg.get("blip2_otp")
    msg = str(err.value)
    assert "unknown widget 'blip2_otp'" in msg
    assert "Did you mean 'blip2_opt'?" in msg
    assert "blip2_opt, blip2_t5" in msg
    assert "\n" not in msg


def test_config_schema_is_kept():
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        x: int = 1

    reg = Registry("widget")
    reg.register("w", object(), config=Cfg)
    assert reg.get_config("w") is Cfg


def test_lavis_style_view_raises_instead_of_none():
    with pytest.raises(RegistryError):
        registry.get_model_class("no_such_model_anywhere")
    assert isinstance(registry.list_models(), list)
