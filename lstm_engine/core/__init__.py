"""The engine: model, optimizer, data, training loop, time budget, generation."""
