"""Helpers shared by the config files."""

import ml_collections


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """Parse a config argument such as `"tiny"` or `"variant=tiny,runlocal"` over `spec`'s defaults.

    `key=value` sets a key (cast to the default's type); a bare word sets a boolean key to True,
    and otherwise names the `variant` (when `spec` has one).
    """
    out = ml_collections.ConfigDict(dict(spec))
    variant_given = False
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        key, eq, value = token.partition("=")
        if not eq:
            if isinstance(spec.get(key), bool):
                out[key] = True
            elif "variant" in spec and not variant_given:
                out.variant, variant_given = key, True
            else:
                raise ValueError(f"Config argument {token!r} is neither a flag nor a variant; "
                                 f"known keys: {sorted(spec)}.")
            continue
        if key not in spec:
            raise ValueError(f"Unknown config argument {key!r}; known keys: {sorted(spec)}.")
        out[key] = _cast(value, spec[key], key)
        variant_given |= key == "variant"
    return out


def _cast(value: str, default, key: str):
    """Cast a string to the type of `default`."""
    if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"Config argument {key}={value!r} must be true or false.")
        return value.lower() in ("true", "1")
    if default is None or isinstance(default, str):
        return value
    return type(default)(value)
