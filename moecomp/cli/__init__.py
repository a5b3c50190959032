"""The ``moecomp`` command line: service processes, administration, a client of the API, the library."""
