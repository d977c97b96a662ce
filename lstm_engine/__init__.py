"""lstm-engine: a character-level LSTM language model written by hand.

The public API lives in lstm_engine.api and is re-exported here.
"""
from .api import (Model, ModelConfig, TrainConfig, Trainer, UserError, Vocab, evaluate, evaluate_checkpoint,
                  generate, get_backend, last_checkpoint, load_corpus, load_model, prepare_training, train,
                  train_config)

__version__ = "0.1.0"
__all__ = ["Model", "ModelConfig", "TrainConfig", "Trainer", "UserError", "Vocab", "evaluate", "evaluate_checkpoint",
           "generate", "get_backend", "last_checkpoint", "load_corpus", "load_model", "prepare_training", "train",
           "train_config"]
