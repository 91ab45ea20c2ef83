// pyllama: force-included into ggml-vulkan (see CMakeLists.txt) when the system's Vulkan headers
// predate VK_EXT_layer_settings (Vulkan-Headers 1.3.239 on Debian 12, for one).
//
// ggml-vulkan.cpp always builds a vk::LayerSettingsCreateInfoEXT for its instance (it turns on
// the validation layer's best-practice checks when GGML_VULKAN_VALIDATE is set) and chains it
// to vk::InstanceCreateInfo::pNext, without a guard. These are the extension's types with its
// C layout and structure type, just enough for that code to compile; the struct goes through
// pNext as a const void*, and the loader and drivers ignore structures they do not know.
#pragma once
#include <vulkan/vulkan_core.h>

#ifndef VK_EXT_layer_settings
#include <cstdint>
#include <vector>

namespace vk {
enum class LayerSettingTypeEXT : int32_t {
    eBool32 = 0, eInt32 = 1, eInt64 = 2, eUint32 = 3, eUint64 = 4, eFloat32 = 5, eFloat64 = 6, eString = 7,
};

struct LayerSettingEXT {
    const char * pLayerName;
    const char * pSettingName;
    LayerSettingTypeEXT type;
    uint32_t valueCount;
    const void * pValues;
};

struct LayerSettingsCreateInfoEXT {
    VkStructureType sType = static_cast<VkStructureType>(1000496000);  // VK_STRUCTURE_TYPE_LAYER_SETTINGS_CREATE_INFO_EXT
    const void * pNext = nullptr;
    uint32_t settingCount = 0;
    const LayerSettingEXT * pSettings = nullptr;

    explicit LayerSettingsCreateInfoEXT(const std::vector<LayerSettingEXT> & settings)
        : settingCount(static_cast<uint32_t>(settings.size())), pSettings(settings.data()) {}
};
}  // namespace vk
#endif
