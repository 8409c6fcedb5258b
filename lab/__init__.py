"""Throwaway database servers and workloads for the tests, the demo and the benchmark."""
