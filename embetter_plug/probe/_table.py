"""The probe table: a DataFrame that prints every row and column (pandas would cut it to ...)."""

from __future__ import annotations

import pandas as pd

__all__ = ["ProbeTable", "DUMMY", "ANY"]

#: part name of the dummy-baseline rows (their layer is missing)
DUMMY = "dummy"
#: context value of a dummy row that serves every value of that column (e.g. every pooling)
ANY = "-"


class ProbeTable(pd.DataFrame):
    """A ``pandas.DataFrame`` whose text and notebook views show all of it.

    A table of probes is read whole (the best row can be anywhere), so its ``repr`` is
    ``to_string()`` and its HTML view lifts pandas' ``max_rows``/``max_columns``; everything else
    is a plain DataFrame.

    Examples
    --------
    >>> table = ProbeTable({"layer": range(100), "f1": [0.5] * 100})
    >>> "..." in repr(table), len(repr(table).splitlines())
    (False, 101)
    """

    @property
    def _constructor(self):
        return ProbeTable

    def __repr__(self) -> str:
        return self.to_string()

    def _repr_html_(self) -> str:
        with pd.option_context("display.max_rows", None, "display.max_columns", None):
            return super()._repr_html_()
