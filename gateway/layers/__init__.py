"""The upstream pipeline's layers, and their order (pipeline.py has the interface).

One module per policy. `stack` lists them outermost first; a layer whose
feature is off for the upstream is left out. A new policy is one class here
and one line in `stack`, at the place its order says: outside the cache if it
must see every call (client spans), inside the breaker if only calls that go
out count (outgoing limits).
"""

from __future__ import annotations

from ..breaker import CircuitBreaker
from ..budget import MemoryBudget
from ..cache import ReplyCache
from ..config import UpstreamConfig
from ..metrics import UpstreamMetrics
from ..pipeline import Layer
from ..reader import BodyReader
from .breaker import BreakerLayer
from .budget import BodyLayer
from .cache import CacheLayer, SingleFlightLayer
from .measure import MetricsLayer
from .retry import RetryLayer, TimeoutLayer
from .slot import SlotLayer


def stack(config: UpstreamConfig, reader: BodyReader, budget: MemoryBudget,
          metrics: UpstreamMetrics | None, cache: ReplyCache | None,
          breaker: CircuitBreaker | None) -> list[Layer]:
    """One upstream's layers, outermost first; the wire (wire.py) goes under the last."""
    layers: list[Layer] = []
    if metrics is not None:
        layers.append(MetricsLayer(metrics))
    if cache is not None:
        layers.append(CacheLayer(cache, reader, metrics))
        layers.append(SingleFlightLayer(reader, metrics))
    if breaker is not None:
        layers.append(BreakerLayer(breaker))
    if config.retries:
        layers.append(RetryLayer(config.name, config.timeout, config.retries, metrics))
    else:
        layers.append(TimeoutLayer(config.name, config.timeout))
    layers.append(BodyLayer(budget, reader))
    layers.append(SlotLayer(config.max_connections, metrics))
    return layers
