// Package v1alpha1 contains the v1alpha1 API of the tripswitch.io group: the CircuitBreaker.
//
// +kubebuilder:object:generate=true
// +groupName=tripswitch.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version used to register these objects.
	GroupVersion = schema.GroupVersion{Group: "tripswitch.io", Version: "v1alpha1"}

	// SchemeBuilder adds this group-version's types to a scheme. It is apimachinery's builder,
	// so that importing the API pulls in no controller-runtime.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types in this group-version to the given scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion, &CircuitBreaker{}, &CircuitBreakerList{})
	metav1.AddToGroupVersion(scheme, GroupVersion)
	return nil
}
