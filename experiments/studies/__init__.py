"""The demo studies' configs (``bioviz run experiments/studies/<name>.yaml``), installed as
``bioviz.studies`` so that ``bioviz demo`` finds them in a wheel as in a checkout."""
