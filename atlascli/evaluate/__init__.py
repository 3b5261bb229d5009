"""The paper's evaluations (4.3, 4.4): translation quality, semantic retrieval, steering faithfulness."""

from atlascli.evaluate.run import KINDS, EvaluateConfig, Report, evaluate

__all__ = ["KINDS", "EvaluateConfig", "Report", "evaluate"]
