"""The paper implementations the notes explain, the notebooks run and the tests check."""
