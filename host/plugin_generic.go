// plugin_generic.go: attaching an installed third-party plugin to a
// generation by what it says it is. ParsePluginUse reads the command-line
// form NAME[:key=value,...]; DescribePluginUse starts the plugin, asks
// Describe for its roles and parameters and checks the given parameters
// against its ParamSpecs (unknown key, bad type, a single parameter given
// twice: an error naming the plugin and the key); PluginsInfotext records the
// plugins in the PNG parameters.
//
// The roles are wired by plugin_generic_patch.go (WeightPatcher),
// plugin_generic_cond.go (Conditioner) and plugin_generic_residuals.go
// (ResidualProvider). It does not look up plugins.json (plugin_config.go)
// and knows nothing of any particular plugin's parameters.
package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/go-plugin"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// PluginUse is one `--plugin NAME[:key=value,...]`: a plugin name and the
// parameters given for it, in order.
type PluginUse struct {
	Name   string
	Params sdk.Params
}

// ParsePluginUse parses NAME[:key=value,...]; a key may repeat (for a
// repeated parameter). Values cannot hold ','.
func ParsePluginUse(s string) (PluginUse, error) {
	name, rest, hasParams := strings.Cut(s, ":")
	if !pluginNameRE.MatchString(name) {
		return PluginUse{}, fmt.Errorf("plugin %q: bad name (want NAME[:key=value,...], name in lowercase letters, digits, . _ -)", name)
	}
	u := PluginUse{Name: name}
	if !hasParams {
		return u, nil
	}
	for _, kv := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return PluginUse{}, fmt.Errorf("plugin %q: parameter %q is not key=value", name, kv)
		}
		u.Params = append(u.Params, sdk.Param{Name: k, Value: v})
	}
	return u, nil
}

// String is the infotext form: name(key=value,...), or name alone.
func (u PluginUse) String() string {
	if len(u.Params) == 0 {
		return u.Name
	}
	kv := make([]string, len(u.Params))
	for i, p := range u.Params {
		kv[i] = p.Name + "=" + p.Value
	}
	return u.Name + "(" + strings.Join(kv, ",") + ")"
}

// PluginsInfotext is the PNG infotext field listing the plugins with their
// parameters, e.g. `Plugins: "example-scale(tensor=x,factor=1.1)"` (the
// value is quoted when written since it holds ',' and ':').
func PluginsInfotext(uses []PluginUse) InfoField {
	s := make([]string, len(uses))
	for i, u := range uses {
		s[i] = u.String()
	}
	return InfoField{Key: "Plugins", Value: strings.Join(s, ", ")}
}

// PluginRoles are the roles a described plugin takes on.
type PluginRoles struct {
	Patch, Condition, Residuals bool
}

// rolesOf reads the roles from Describe's capabilities.
func rolesOf(caps []sdk.Capability) PluginRoles {
	return PluginRoles{
		Patch:     slices.Contains(caps, sdk.CapPatchWeights),
		Condition: slices.Contains(caps, sdk.CapConditioning),
		Residuals: slices.Contains(caps, sdk.CapResiduals),
	}
}

// DescribedPlugin is a started plugin with its roles and its checked use.
type DescribedPlugin struct {
	Plugin *Plugin
	Use    PluginUse
	Roles  PluginRoles
	Info   *sdk.DescribeResponse
}

// DescribePluginUse asks p for its roles and parameter declarations and
// checks u's parameters against them. host names parameters the host
// itself consumes for some role (e.g. "strength" of a residual provider
// that does not declare it); they pass the check.
func DescribePluginUse(ctx context.Context, p *Plugin, u PluginUse) (*DescribedPlugin, error) {
	d, err := p.Describe(ctx)
	if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
		return nil, fmt.Errorf("%w (the sha256 listed in plugins.json is not the binary's: reinstall it)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("starting it: %w", err)
	}
	roles := rolesOf(d.Capabilities)
	if !roles.Patch && !roles.Condition && !roles.Residuals {
		return nil, fmt.Errorf("plugin %q declares no role sdbridge can use (capabilities %v)", u.Name, d.Capabilities)
	}
	var hostOwned []string
	if roles.Residuals && !slices.ContainsFunc(d.Params, func(s sdk.ParamSpec) bool { return s.Name == StrengthParam }) {
		hostOwned = append(hostOwned, StrengthParam)
	}
	if err := CheckPluginParams(u.Name, d.Params, u.Params, hostOwned...); err != nil {
		return nil, err
	}
	return &DescribedPlugin{Plugin: p, Use: u, Roles: roles, Info: d}, nil
}

// StrengthParam scales a residual provider's residuals on the host when
// the plugin does not declare a parameter of that name itself.
const StrengthParam = "strength"

// CheckPluginParams checks given against a plugin's declarations: every key
// declared (or in hostOwned, checked as a float), each value of its type
// (float, int, bool; a file must exist), a non-repeated key at most once.
func CheckPluginParams(plugin string, specs []sdk.ParamSpec, given sdk.Params, hostOwned ...string) error {
	byName := map[string]sdk.ParamSpec{}
	var names []string
	for _, s := range specs {
		byName[s.Name] = s
		names = append(names, s.Name)
	}
	for _, h := range hostOwned {
		if _, ok := byName[h]; !ok {
			byName[h] = sdk.ParamSpec{Name: h, Type: sdk.ParamFloat}
			names = append(names, h)
		}
	}
	seen := map[string]bool{}
	var errs []error
	for _, g := range given {
		s, ok := byName[g.Name]
		if !ok {
			accepted := "none"
			if len(names) > 0 {
				accepted = strings.Join(names, ", ")
			}
			errs = append(errs, fmt.Errorf("plugin %q: unknown parameter %q (accepted: %s)", plugin, g.Name, accepted))
			continue
		}
		if seen[g.Name] && !s.Repeated {
			errs = append(errs, fmt.Errorf("plugin %q: parameter %q given twice (it is not repeatable)", plugin, g.Name))
		}
		seen[g.Name] = true
		if err := checkParamValue(s.Type, g.Value); err != nil {
			errs = append(errs, fmt.Errorf("plugin %q: parameter %q: %w", plugin, g.Name, err))
		}
	}
	return errors.Join(errs...)
}

// checkParamValue checks v is a value of type t.
func checkParamValue(t sdk.ParamType, v string) error {
	var err error
	switch t {
	case sdk.ParamFloat:
		_, err = strconv.ParseFloat(v, 64)
	case sdk.ParamInt:
		_, err = strconv.Atoi(v)
	case sdk.ParamBool:
		_, err = strconv.ParseBool(v)
	case sdk.ParamFile:
		_, err = os.Stat(v)
		return err
	case sdk.ParamString, "":
		return nil
	default:
		return fmt.Errorf("declared with unknown type %q", t)
	}
	if err != nil {
		return fmt.Errorf("%q is not a %s", v, t)
	}
	return nil
}
