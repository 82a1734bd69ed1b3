"""Generated protobuf modules; only :mod:`substantial.events` imports them."""
