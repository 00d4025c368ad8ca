/* The family table: every family moemu implements, by model_type. */
#include <stdio.h>
#include <string.h>

#include "engine/models/family.h"

static const model_family_t *const families[] = {
    &family_mixtral,  &family_qwen2_moe,   &family_qwen3_moe,   &family_olmoe,
    &family_granitemoe, &family_deepseek_v2, &family_deepseek_v3, &family_kimi_k2,
    &family_gpt_oss};
#define N_FAMILIES (sizeof families / sizeof families[0])

const model_family_t *family_find(const char *model_type)
{
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(families[i]->model_type, model_type) == 0) return families[i];
    return NULL;
}

const char *family_names(void)
{
    static char names[256];
    if (!names[0])
        for (size_t i = 0; i < N_FAMILIES; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                     families[i]->model_type);
    return names;
}
