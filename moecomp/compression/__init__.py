"""The compression library. It imports nothing from moecomp.api, moecomp.worker or moecomp.persistence."""
