"""Local stack for the demo run and the tests: the Firestore and Pub/Sub emulators (installed
with the Google Cloud CLI) and functions-framework processes, on free loopback ports."""
