import WardenCore

/// Advisories: version ordering per package manager, advisory import, and matching.
public enum Advisories {}
