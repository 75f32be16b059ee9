"""Reading runs: training plots and the step-alignment page (`training.py`), eval results of
several runs side by side (`compare.py`)."""
