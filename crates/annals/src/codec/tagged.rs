//! An externally tagged serde enum written and read as a recorded event: the variant name
//! is the event type, the variant's body the data. serde_json writes and reads the body
//! straight from and to the value, without a `serde_json::Value` in between (which cannot
//! hold integers past 64 bits and costs a tree of allocations per event).

use serde::de::{self, DeserializeSeed, Visitor};
use serde::ser::{self, Impossible, Serialize};

/// An event's type and JSON body.
pub(super) struct Split {
    pub(super) variant: &'static str,
    pub(super) body: Vec<u8>,
}

/// Why a value could not be split into a variant and its body.
#[derive(Debug)]
pub(super) enum SplitError {
    /// Its `Serialize` wrote something other than one enum variant (a map, a flattened
    /// struct variant...): the caller goes the long way.
    NotOneVariant,
    /// The body failed to serialize.
    Json(serde_json::Error),
}

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitError::NotOneVariant => f.write_str("not one enum variant"),
            SplitError::Json(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SplitError {}

impl ser::Error for SplitError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        SplitError::Json(<serde_json::Error as ser::Error>::custom(msg))
    }
}

impl From<serde_json::Error> for SplitError {
    fn from(e: serde_json::Error) -> Self {
        SplitError::Json(e)
    }
}

/// The variant of `event` and its body, as serde_json writes them inside
/// `{"Variant": body}` (or `null` for a unit variant).
pub(super) fn split<E: Serialize + ?Sized>(event: &E) -> Result<Split, SplitError> {
    event.serialize(Outer)
}

struct Outer;

/// A tuple or struct variant's body, written as serde_json writes a sequence or an object
/// (compact).
pub(super) struct Body {
    variant: &'static str,
    out: Vec<u8>,
    first: bool,
}

impl Body {
    fn new(variant: &'static str, open: u8) -> Self {
        let mut out = Vec::with_capacity(64);
        out.push(open);
        Self {
            variant,
            out,
            first: true,
        }
    }

    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
    }

    fn end(mut self, close: u8) -> Split {
        self.out.push(close);
        Split {
            variant: self.variant,
            body: self.out,
        }
    }
}

impl ser::SerializeTupleVariant for Body {
    type Ok = Split;
    type Error = SplitError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SplitError> {
        self.separate();
        Ok(serde_json::to_writer(&mut self.out, value)?)
    }

    fn end(self) -> Result<Split, SplitError> {
        Ok(Body::end(self, b']'))
    }
}

impl ser::SerializeStructVariant for Body {
    type Ok = Split;
    type Error = SplitError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SplitError> {
        self.separate();
        serde_json::to_writer(&mut self.out, key)?;
        self.out.push(b':');
        Ok(serde_json::to_writer(&mut self.out, value)?)
    }

    fn end(self) -> Result<Split, SplitError> {
        Ok(Body::end(self, b'}'))
    }
}

macro_rules! not_one_variant {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Split, SplitError> {
            Err(SplitError::NotOneVariant)
        })*
    };
}

impl ser::Serializer for Outer {
    type Ok = Split;
    type Error = SplitError;
    type SerializeSeq = Impossible<Split, SplitError>;
    type SerializeTuple = Impossible<Split, SplitError>;
    type SerializeTupleStruct = Impossible<Split, SplitError>;
    type SerializeTupleVariant = Body;
    type SerializeMap = Impossible<Split, SplitError>;
    type SerializeStruct = Impossible<Split, SplitError>;
    type SerializeStructVariant = Body;

    not_one_variant! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
        serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
        serialize_f64(f64); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_none(); serialize_unit(); serialize_unit_struct(&'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Split, SplitError> {
        Err(SplitError::NotOneVariant)
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Split, SplitError> {
        Ok(Split {
            variant,
            body: b"null".to_vec(),
        })
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Split, SplitError> {
        // A newtype around the event enum is transparent, as serde_json writes it.
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Split, SplitError> {
        Ok(Split {
            variant,
            body: serde_json::to_vec(value)?,
        })
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, SplitError> {
        Err(SplitError::NotOneVariant)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, SplitError> {
        Err(SplitError::NotOneVariant)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, SplitError> {
        Err(SplitError::NotOneVariant)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Body, SplitError> {
        Ok(Body::new(variant, b'['))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SplitError> {
        Err(SplitError::NotOneVariant)
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, SplitError> {
        Err(SplitError::NotOneVariant)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Body, SplitError> {
        Ok(Body::new(variant, b'{'))
    }
}

/// A recorded event presented to an enum's `Deserialize` as the variant named `variant`
/// whose body is the JSON `body`, read by serde_json straight from the text.
pub(super) struct Tagged<'a> {
    pub(super) variant: &'a str,
    pub(super) body: &'a [u8],
}

impl<'de> de::Deserializer<'de> for Tagged<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> de::EnumAccess<'de> for Tagged<'de> {
    type Error = serde_json::Error;
    type Variant = Variant<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Variant<'de>), Self::Error> {
        let name = de::value::BorrowedStrDeserializer::<serde_json::Error>::new(self.variant);
        Ok((seed.deserialize(name)?, Variant { body: self.body }))
    }
}

/// The body of the variant being read.
pub(super) struct Variant<'a> {
    body: &'a [u8],
}

impl<'de> Variant<'de> {
    /// Reads the whole body with `read`: one JSON value and nothing after it.
    fn read<T>(
        self,
        read: impl FnOnce(
            &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
        ) -> Result<T, serde_json::Error>,
    ) -> Result<T, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(self.body);
        let value = read(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.read(|de| <() as de::Deserialize>::deserialize(de))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.read(|de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.read(|de| de::Deserializer::deserialize_tuple(de, len, visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.read(|de| de::Deserializer::deserialize_struct(de, "", fields, visitor))
    }
}
