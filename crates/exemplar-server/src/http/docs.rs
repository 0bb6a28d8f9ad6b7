//! The OpenAPI document (`/openapi.json`) and Swagger UI (`/docs`), generated from the
//! handlers' annotations and the types in `crate::dto` and `forms.rs`.

use super::{backup, forms, metrics, photos, reindex, routes, train, unknowns};
use crate::dto;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Exemplar",
        description = "Recognise items (album and DVD covers, …) from phone photos. Add a class with exemplar photos; search with a photo. When an API key is configured, writes need `Authorization: Bearer <key>`."
    ),
    paths(
        routes::create_class,
        routes::list_classes,
        routes::get_class,
        routes::update_class,
        routes::delete_class,
        routes::add_exemplars,
        routes::delete_exemplar,
        photos::photo,
        photos::thumbnail,
        routes::search,
        unknowns::list,
        unknowns::photo,
        unknowns::promote,
        unknowns::dismiss,
        routes::refit,
        backup::backup,
        reindex::start,
        reindex::status,
        reindex::cancel,
        train::start,
        train::status,
        train::cancel,
        routes::healthz,
        routes::readyz,
        metrics::render,
    ),
    components(schemas(
        dto::Class,
        dto::CreatedClass,
        dto::AddedExemplars,
        dto::UploadedExemplar,
        dto::ClassPage,
        dto::ClassDetail,
        dto::StoredExemplar,
        dto::SearchResult,
        dto::NeighbourHit,
        dto::ClassHit,
        dto::SearchVerdict,
        dto::SearchTimings,
        dto::VerificationEvidence,
        dto::ErrorBody,
        dto::RebuildReport,
        backup::BackupRequest,
        backup::BackupMade,
        crate::backup::Manifest,
        reindex::ReindexProgress,
        crate::reindex::IndexSpec,
        crate::reindex::SpecChange,
        crate::train_job::TrainRequest,
        crate::train_job::TrainStatus,
        crate::train_job::Install,
        forms::NewClassForm,
        forms::ImagesForm,
        forms::SearchForm,
        forms::ClassUpdate,
        unknowns::Unknown,
        unknowns::UnknownPage,
        unknowns::PromoteRequest,
    )),
    modifiers(&ApiKey, &FormContract)
)]
pub struct ApiDoc;

struct ApiKey;

impl Modify for ApiKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What the derive cannot say: form parts are the only fields a form takes (unknown
/// ones are refused), `metadata` travels as a JSON part with the service's bounds, labels
/// have a visible character and no control characters, and a class update names at least
/// one field. A promotion's body follows the same rules.
struct FormContract;

/// No control characters (C0, DEL, C1) and at least one that is not white space.
const VISIBLE_TEXT: &str =
    "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$";

fn metadata_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let limits = exemplar_core::service::Limits::default();
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(format!(
            "String values; at most {} entries, keys 1 to {} characters, values up to {}, {} bytes in all.",
            limits.max_metadata_entries,
            limits.max_metadata_key_chars,
            limits.max_metadata_value_chars,
            limits.max_metadata_bytes
        )))
        .max_properties(Some(limits.max_metadata_entries))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(limits.max_metadata_key_chars))
                // A character the server does not trim: ECMA-262's `\s` lacks U+0085.
                .pattern(Some("[^\\s\\u0085]")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(limits.max_metadata_value_chars)),
        ))
        .build()
}

impl Modify for FormContract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        use utoipa::openapi::RefOr;
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, schema) in components.schemas.iter_mut() {
            let RefOr::T(Schema::Object(object)) = schema else {
                continue;
            };
            if !(name.ends_with("Form") || name == "ClassUpdate" || name == "PromoteRequest") {
                continue;
            }
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            if let Some(RefOr::T(Schema::Object(label))) = object.properties.get_mut("label") {
                label.pattern = Some(VISIBLE_TEXT.into());
            }
            if object.properties.contains_key("metadata") {
                let mut metadata = metadata_schema();
                if let Some(RefOr::T(Schema::Object(documented))) =
                    object.properties.get("metadata")
                {
                    metadata.description = documented.description.clone();
                }
                object
                    .properties
                    .insert("metadata".into(), RefOr::T(Schema::Object(metadata)));
                object.required.retain(|field| field != "metadata");
            }
            if name == "ClassUpdate" {
                object.min_properties = Some(1);
                object.max_properties = None;
            }
        }
        let classes = openapi.paths.paths.get_mut("/classes");
        let body = classes
            .and_then(|item| item.post.as_mut())
            .and_then(|post| post.request_body.as_mut());
        if let Some(content) = body.and_then(|b| b.content.get_mut("multipart/form-data")) {
            content.encoding.insert(
                "metadata".into(),
                utoipa::openapi::encoding::EncodingBuilder::new()
                    .content_type(Some("application/json"))
                    .build(),
            );
        }
    }
}
