//! The request bodies, described for the OpenAPI document. Multipart forms are parsed
//! field by field in `routes.rs` (to name each bad field); these types only document them.
#![allow(dead_code)]

use utoipa::ToSchema;

/// `multipart/form-data` for `POST /classes`.
#[derive(ToSchema)]
pub struct NewClassForm {
    /// The class's name (1 to 200 characters).
    #[schema(example = "Kind of Blue", min_length = 1, max_length = 200)]
    label: String,
    /// A JSON object of string values (the part's content is JSON).
    #[schema(value_type = Object, nullable = false, example = json!({"artist": "Miles Davis", "format": "CD"}))]
    metadata: Option<std::collections::BTreeMap<String, String>>,
    /// One or more photos (repeat the part, at most 32).
    #[schema(value_type = Vec<String>, format = Binary, min_items = 1, max_items = 32)]
    image: Vec<Vec<u8>>,
}

/// `multipart/form-data` with one or more `image` parts.
#[derive(ToSchema)]
pub struct ImagesForm {
    /// One or more photos (repeat the part, at most 32).
    #[schema(value_type = Vec<String>, format = Binary, min_items = 1, max_items = 32)]
    image: Vec<Vec<u8>>,
}

/// `multipart/form-data` for `POST /search`.
#[derive(ToSchema)]
pub struct SearchForm {
    /// Exactly one photo.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// Nearest exemplars to return, 1 to 100 (default 10).
    #[schema(minimum = 1, maximum = 100)]
    k: Option<u32>,
    /// Only classes whose metadata has this `key=value` (repeat the part to require several).
    #[schema(example = "format=CD")]
    filter: Option<Vec<String>>,
    /// Search only this part of the photo: `x,y,width,height` in pixels of the upright
    /// photo (after its EXIF orientation is applied).
    #[schema(example = "120,80,900,900")]
    crop: Option<String>,
}

/// `PATCH /classes/{id}`: either field or both.
#[derive(ToSchema)]
pub struct ClassUpdate {
    /// The new name (1 to 200 characters).
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    label: Option<String>,
    /// Replaces the whole metadata object (string values).
    #[schema(nullable = false)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
}
