"""Code referenced from specs in tests: a pandera DataFrameModel and transform functions."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series


class InvoiceModel(pa.DataFrameModel):
    """Invoices must have a positive total and a customer id below 1000."""

    customer_id: Series[pd.Int64Dtype] = pa.Field(lt=1000)

    @pa.dataframe_check
    def total_positive(cls, df: pd.DataFrame) -> pd.Series:
        return df["total"].map(lambda v: v is None or v > 0)


def upper_city(frame: pd.DataFrame) -> pd.DataFrame:
    frame["billing_city"] = frame["billing_city"].map(lambda v: v.upper() if isinstance(v, str) else v)
    return frame


def explode_on_13(frame: pd.DataFrame) -> pd.DataFrame:
    if (frame["invoice_id"] == 13).any():
        raise ValueError("unlucky invoice")
    return frame


def drop_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[1:]


def round_amount(frame: pd.DataFrame) -> pd.DataFrame:
    from decimal import ROUND_HALF_EVEN, Decimal

    frame["amount"] = frame["amount"].map(lambda v: Decimal(str(v)).quantize(Decimal("0.01"), ROUND_HALF_EVEN))
    return frame


def shorten_name(frame: pd.DataFrame) -> pd.DataFrame:
    frame["name"] = frame["name"].map(lambda v: v[:6] if isinstance(v, str) else v)
    return frame
