//! `SqlValue`s to and from PostgreSQL: parameters bound to whatever type a statement
//! declares, columns decoded by their type (`numeric` included).

use annals::{Error, Result, SqlValue};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::error::backend;

/// A [`SqlValue`] bound to a parameter of whatever type the statement declares.
#[derive(Debug)]
pub(crate) struct Param<'a>(pub(crate) &'a SqlValue);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let mismatch = || -> Box<dyn std::error::Error + Sync + Send> {
            format!("cannot bind {:?} to a parameter of type {ty}", self.0).into()
        };
        match self.0 {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Bool(b) if *ty == Type::BOOL => b.to_sql(ty, out),
            SqlValue::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            SqlValue::Float(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            SqlValue::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_str().to_sql(ty, out)
                }
                // The binary forms: the text, after a version byte for jsonb.
                Type::JSON => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                _ => Err(mismatch()),
            },
            SqlValue::Bytes(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            _ => Err(mismatch()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A `numeric` (what `sum` and `avg` return): an integer when it is whole and fits, its
/// exact decimal text otherwise.
struct Numeric(SqlValue);

impl<'a> tokio_postgres::types::FromSql<'a> for Numeric {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word =
            |k: usize| -> std::result::Result<i16, Box<dyn std::error::Error + Sync + Send>> {
                raw.get(k..k + 2)
                    .map(|b| i16::from_be_bytes([b[0], b[1]]))
                    .ok_or_else(|| "a truncated numeric".into())
            };
        let (ndigits, weight, sign, dscale) = (word(0)?, word(2)?, word(4)? as u16, word(6)?);
        if sign == 0xC000 {
            return Ok(Numeric(SqlValue::Text("NaN".into())));
        }
        let digits: Vec<i16> = (0..ndigits.max(0) as usize)
            .map(|k| word(8 + 2 * k))
            .collect::<std::result::Result<_, _>>()?;
        // Base-10000 digits: `weight` is the power of the first.
        let mut int_part = String::new();
        for p in 0..=weight.max(-1) {
            let d = digits.get(p as usize).copied().unwrap_or(0);
            if int_part.is_empty() {
                if d != 0 {
                    int_part = d.to_string();
                }
            } else {
                int_part.push_str(&format!("{d:04}"));
            }
        }
        if int_part.is_empty() {
            int_part.push('0');
        }
        let mut frac = String::new();
        for p in (weight + 1).max(0)..ndigits.max(0) {
            let d = digits.get(p as usize).copied().unwrap_or(0);
            frac.push_str(&format!("{d:04}"));
        }
        let mut frac: String = frac
            .chars()
            .chain(std::iter::repeat('0'))
            .take(dscale.max(0) as usize)
            .collect();
        if weight < -1 {
            let zeros = "0000".repeat((-1 - weight) as usize);
            frac = format!("{zeros}{frac}")
                .chars()
                .take(dscale.max(0) as usize)
                .collect();
        }
        let negative = sign == 0x4000;
        if frac.chars().all(|c| c == '0') {
            if let Ok(v) = int_part.parse::<i64>() {
                return Ok(Numeric(SqlValue::Int(if negative { -v } else { v })));
            }
        }
        let sign = if negative { "-" } else { "" };
        let text = if frac.is_empty() {
            format!("{sign}{int_part}")
        } else {
            format!("{sign}{int_part}.{frac}")
        };
        Ok(Numeric(SqlValue::Text(text)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

fn column(row: &tokio_postgres::Row, i: usize) -> Result<SqlValue> {
    let ty = row.columns()[i].type_();
    let get = |e: tokio_postgres::Error| backend(e);
    Ok(match *ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(get)?
            .map(SqlValue::Bool),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(get)?
            .map(|v| SqlValue::Int(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(get)?
            .map(|v| SqlValue::Int(v.into())),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(get)?
            .map(SqlValue::Int),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)
            .map_err(get)?
            .map(|v| SqlValue::Float(v.into())),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(i)
            .map_err(get)?
            .map(SqlValue::Float),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
            .try_get::<_, Option<String>>(i)
            .map_err(get)?
            .map(SqlValue::Text),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(get)?
            .map(SqlValue::Bytes),
        Type::NUMERIC => row
            .try_get::<_, Option<Numeric>>(i)
            .map_err(get)?
            .map(|n| n.0),
        ref other => {
            return Err(Error::ReadModel {
                reason: format!(
                    "column {} is of type {other}: cast it in the query (for example ::text)",
                    row.columns()[i].name()
                ),
            })
        }
    }
    .unwrap_or(SqlValue::Null))
}

pub(crate) async fn query(
    client: &ClientWrapper,
    sql: &str,
    params: &[SqlValue],
) -> Result<Vec<Vec<SqlValue>>> {
    let statement = client.prepare_cached(sql).await.map_err(backend)?;
    let params: Vec<Param<'_>> = params.iter().map(Param).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&statement, &refs).await.map_err(backend)?;
    decode_rows(&rows)
}

pub(crate) fn decode_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<Vec<SqlValue>>> {
    rows.iter()
        .map(|row| (0..row.len()).map(|i| column(row, i)).collect())
        .collect()
}
