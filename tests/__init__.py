"""rnnkern's tests, grouped by what they test; a package so that test files in different folders
can share a basename and import the shared helpers as tests.conftest."""
