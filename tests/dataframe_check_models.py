"""pandera DataFrameModels referenced by the specs of tests/extract/test_dataframe_checks.py."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series


class ShipAfterOrder(pa.DataFrameModel):
    """A DataFrame-wide rule over two columns: an order ships on or after the day it was placed."""

    qty: Series[pd.Int64Dtype] = pa.Field(ge=0, nullable=True)

    @pa.dataframe_check
    def ship_after_order(cls, df: pd.DataFrame) -> pd.Series:
        return df["ship_date"].isna() | (df["ship_date"] >= df["order_date"])


class FieldTypo(pa.DataFrameModel):
    """``shipdate`` is not a column of the orders spec (it is ``ship_date``)."""

    shipdate: Series[pd.Int64Dtype] = pa.Field(nullable=True)
