/// Advisory matching: deciding whether an installed package version is affected.
///
/// Version ordering follows each package manager exactly: ``DebianVersion`` (dpkg),
/// ``RPMVersion`` (rpmvercmp) and ``APKVersion`` (apk-tools), behind ``VersionScheme``.
public enum Advisories {}
