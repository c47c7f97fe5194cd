// The seeded generator lives in WardenCore; tests that import only WardenTestSupport see it too.
@_exported import struct WardenCore.SeededRandom
