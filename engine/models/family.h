/* family: a model family behind a table of functions, chosen by the
 * config's model_type (DESIGN.md, "Model semantics"). The runner, the
 * tools and the CLI reach a model only through its family's entry, so
 * that a new family is a new entry (docs/architecture.md gives the
 * recipe). */
#ifndef MOEMU_FAMILY_H
#define MOEMU_FAMILY_H

#include "engine/models/config.h"

struct model_family {
    const char *model_type; /* "mixtral" */
    /* The sizes parallel/'s generic rules need, and the family's own
     * rules (heads, key/value heads, ...) as a callback in it. */
    void (*dims)(const cfg_model_t *c, par_dims_t *out);
};

extern const model_family_t family_mixtral;

/* A config's family: one without model_type is moemu's own format,
 * Mixtral's function with its extensions (DESIGN.md). */
static inline const model_family_t *family_of(const cfg_model_t *c)
{
    return c->family ? c->family : &family_mixtral;
}
/* The family registered for model_type, NULL if none. */
const model_family_t *family_find(const char *model_type);
/* "mixtral, ..." : the registered names, for messages. */
const char *family_names(void);

#endif
