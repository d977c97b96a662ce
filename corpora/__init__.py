"""The corpus registry (registry.json), installed as lstm_engine.corpora_data; no code lives here."""
