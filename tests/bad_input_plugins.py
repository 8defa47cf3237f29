"""Source of the one-off local plugins the bad-input corpus (test_bad_input.py) writes to files: each misbehaves in
one way a third-party method can. Not a test module (no ``test_`` prefix); read as text by the fixtures."""

HEADER = '''
import math
import os
import torch
import hallufix
from hallufix import points
from hallufix.method import Method
'''

PLUGINS = {
    "syntax": "def broken(:\n    pass\n",
    "imports": "import hallufix_no_such_module_xyz\n",
    # a local plugin that reuses a built-in method's name
    "shadow": HEADER + '''
class Shadow(Method):
    name = "clva"

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return []
''',
    "init": HEADER + '''
class Init(Method):
    name = "init-fails"

    def __init__(self, config=None):
        raise RuntimeError("cannot build myself")
''',
    "configure": HEADER + '''
class Configure(Method):
    name = "configure-fails"

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([model.num_layers])[0:0] + [][5]
''',
    "layer": HEADER + '''
class BadLayer(Method):
    name = "bad-layer"

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([99])

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        pass
''',
    # raises in a per-layer hook on its second batch: the first batch must stay recorded
    "forward": HEADER + '''
class Forward(Method):
    name = "forward-fails"

    def __init__(self, config=None):
        super().__init__(config)
        self.batches = 0

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([1])

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self.batches += 1

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        if self.batches >= 2:
            raise KeyError("missing anchor")
''',
    "shape": HEADER + '''
class Shape(Method):
    name = "wrong-shape"

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([1])

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        event.add(torch.zeros(1, 1, 3))
''',
    # raises in batch_end on its second batch: that generated batch must be kept
    "batch_end": HEADER + '''
class BatchEnd(Method):
    name = "batch-end-fails"

    def __init__(self, config=None):
        super().__init__(config)
        self.batches = 0

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([1])

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        pass

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        self.batches += 1
        if self.batches >= int(os.environ.get("BATCH_END_FAIL_AT", "2")):
            raise ValueError("summary failed")
''',
    "nan_logits": HEADER + '''
class NanLogits(Method):
    name = "nan-logits"

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.logits()

    @hallufix.hookimpl
    def hallufix_logits(self, event):
        event.scores = event.scores * float("nan")
''',
    # NaN logits only for questions about a star: with --on-nonfinite record, only that sample is flagged
    "nan_star": HEADER + '''
class NanStar(Method):
    name = "nan-star"

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.logits()

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self.rows = [i for i, q in enumerate(batch.questions) if "star" in q]

    @hallufix.hookimpl
    def hallufix_logits(self, event):
        if self.rows:
            event.scores[self.rows] = float("nan")
''',
    "nan_bias": HEADER + '''
class NanBias(Method):
    name = "nan-bias"

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([2])

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        event.add(torch.where(event.visual_keys, float("nan"), 0.0))
''',
    "nan_diag": HEADER + '''
class NanDiag(Method):
    name = "nan-diagnostics"

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([1])

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        pass

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        for d in batch.diagnostics:
            d["nan-diagnostics"] = {"ratio": float("nan"), "peak": float("inf"), "ok": 1.0}
''',
    "ninf_visual": HEADER + '''
class NegInfVisual(Method):
    name = "ninf-visual"

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([1])

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        event.add(torch.where(event.visual_keys, float("-inf"), 0.0))
''',
    "interrupt": HEADER + '''
class Interrupt(Method):
    name = "interrupts"

    def __init__(self, config=None):
        super().__init__(config)
        self.batches = 0

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([1])

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self.batches += 1
        if self.batches >= int(os.environ.get("INTERRUPT_AT_BATCH", "2")):
            raise KeyboardInterrupt

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        pass
''',
}
