"""A cache for the simulator's expensive media: functools.lru_cache, but computing each key once.

lru_cache lets every thread that misses compute: two hundred Kling tasks that start together on one
still would each encode the same video before the first one landed. Here the first caller of a key
computes it while the others wait for its result.
"""

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class CacheInfo(NamedTuple):
    hits: int
    # how many times the function ran
    misses: int
    currsize: int


class SingleFlightCache(Generic[P, R]):
    def __init__(self, function: Callable[P, R], maxsize: int) -> None:
        self._function = function
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._results: OrderedDict[Hashable, R] = OrderedDict()
        # one lock per key being computed; its holder is the one caller computing it
        self._computing: dict[Hashable, threading.Lock] = {}
        self._hits = self._misses = 0
        functools.update_wrapper(self, function)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = (args, tuple(sorted(kwargs.items())))
        with self._lock:
            if key in self._results:
                return self._hit(key)
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:
            with self._lock:
                if key in self._results:  # computed while this caller waited
                    return self._hit(key)
                self._misses += 1
            try:
                result = self._function(*args, **kwargs)
            except BaseException:
                with self._lock:
                    self._computing.pop(key, None)  # not cached: the next caller tries again
                raise
            with self._lock:
                # stored in the step that ends the computing, so no newcomer can miss both
                self._computing.pop(key, None)
                self._store(key, result)
            return result

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._results))

    def _hit(self, key: Hashable) -> R:
        self._hits += 1
        self._results.move_to_end(key)
        return self._results[key]

    def _store(self, key: Hashable, result: R) -> None:
        self._results[key] = result
        if len(self._results) > self._maxsize:
            self._results.popitem(last=False)


def single_flight_cache(maxsize: int) -> Callable[[Callable[P, R]], SingleFlightCache[P, R]]:
    def decorate(function: Callable[P, R]) -> SingleFlightCache[P, R]:
        return SingleFlightCache(function, maxsize)

    return decorate
