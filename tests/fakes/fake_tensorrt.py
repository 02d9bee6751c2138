"""TEST DOUBLE — a recording fake of the `tensorrt` Python module (TensorRT cannot be installed on
this project's machines). It records every call so tests can check our call sequence against the
documented 10.x and 11.x APIs; it builds nothing real.

`make_fake(major)`: 10 has NetworkDefinitionCreationFlag.EXPLICIT_BATCH/STRONGLY_TYPED and
BuilderFlag.FP16/INT8; 11 has no EXPLICIT_BATCH and no precision builder flags.
"""

from __future__ import annotations

import enum
import types


def make_fake(major: int):
    calls: list[tuple] = []

    def rec(*a):
        calls.append(a)

    m = types.ModuleType("tensorrt")
    m.__version__ = f"{major}.0.1"
    m.calls = calls

    class Logger:
        WARNING = 2

        def __init__(self, sev=None):
            rec("Logger", sev)

    if major >= 11:
        NDCF = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})
        BuilderFlag = enum.IntEnum("BuilderFlag", {"TF32": 2, "VERSION_COMPATIBLE": 7})
    else:
        NDCF = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
        BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "TF32": 2, "VERSION_COMPATIBLE": 7})
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1})
    LayerInformationFormat = enum.IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})

    class TimingCache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            rec("TimingCache.serialize")
            return b"cache:" + bytes(self.blob)

    class Config:
        def __init__(self):
            self._cache = None

        def __setattr__(self, k, v):
            if not k.startswith("_"):
                rec("config.set", k, v)
            object.__setattr__(self, k, v)

        def set_memory_pool_limit(self, pool, size):
            rec("config.set_memory_pool_limit", pool, size)

        def set_flag(self, flag):
            rec("config.set_flag", flag)

        def create_timing_cache(self, blob):
            rec("config.create_timing_cache", bytes(blob))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            rec("config.set_timing_cache", ignore_mismatch)
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    class Network:
        pass

    class Builder:
        def __init__(self, logger):
            rec("Builder")

        def create_network(self, flags=0):
            rec("create_network", flags)
            if major >= 11 and flags & 1:  # EXPLICIT_BATCH's bit does not exist on 11
                raise AttributeError("EXPLICIT_BATCH")
            return Network()

        def create_builder_config(self):
            rec("create_builder_config")
            return Config()

        def build_serialized_network(self, network, config):
            rec("build_serialized_network")
            return b"PLAN"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            rec("OnnxParser")

        def parse_from_file(self, path):
            rec("parse_from_file", path)
            return True

        def get_error(self, i):
            return "?"

    class Inspector:
        def get_engine_information(self, fmt):
            rec("inspector.get_engine_information", fmt)
            key = "I/O Tensors" if major >= 11 else "Bindings"
            return '{"Layers": [], "%s": []}' % key

    class Engine:
        def create_engine_inspector(self):
            rec("engine.create_engine_inspector")
            return Inspector()

    class Runtime:
        def __init__(self, logger):
            rec("Runtime")

        def deserialize_cuda_engine(self, plan):
            rec("deserialize_cuda_engine", plan)
            return Engine()

    for name, obj in dict(Logger=Logger, NetworkDefinitionCreationFlag=NDCF, BuilderFlag=BuilderFlag,
                          MemoryPoolType=MemoryPoolType, ProfilingVerbosity=ProfilingVerbosity,
                          HardwareCompatibilityLevel=HardwareCompatibilityLevel,
                          LayerInformationFormat=LayerInformationFormat, Builder=Builder, OnnxParser=OnnxParser,
                          Runtime=Runtime).items():
        setattr(m, name, obj)
    return m
