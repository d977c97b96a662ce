"""Where text comes from: the corpus registry, converters, verified downloads."""
