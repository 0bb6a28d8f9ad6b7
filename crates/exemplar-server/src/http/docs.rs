//! The OpenAPI document (`/openapi.json`) and Swagger UI (`/docs`), generated from the
//! handlers' annotations and the types in `dto.rs` / `forms.rs`.

use super::{dto, forms, routes};
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
        routes::search,
        routes::refit,
        routes::healthz,
        routes::readyz,
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
        forms::NewClassForm,
        forms::ImagesForm,
        forms::SearchForm,
        forms::ClassUpdate,
    )),
    modifiers(&ApiKey)
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
