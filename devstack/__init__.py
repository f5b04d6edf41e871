"""The local stack: the Firestore emulator, the Novita simulator and both functions as real
processes on loopback, for the local run, the tests and the benchmarks."""
